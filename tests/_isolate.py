"""Run a call in a forked child process, so that a crash (a signal) or a hang is a result, not a dead test run.

The child inherits the imported modules (fork), so a call costs a fork, not an import of torch. Intra-op threads
are pinned to one: a forked child must not inherit a busy OpenMP pool.

Once CUDA has started in this process (a GPU run), forking is unsafe: the child inherits a CUDA context it cannot
use, and CUDA calls in it fail or hang. Then the calls run in a thread of this process instead: an exception is
still a result and a hang still ends at the time limit (the stuck thread is left behind), but a crash ends the
run (the GPU check runs these tests last, in workers of their own, for that reason).
"""

import io
import multiprocessing
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

torch.set_num_threads(1)

_FORK = multiprocessing.get_context("fork")
_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Outcome:
    """``kind``: ``"ok"`` (``value`` holds the result), ``"raised"`` (``error`` = type name, ``message``),
    ``"crashed"`` (``message`` names the signal) or ``"hung"`` (past the time limit)."""

    kind: str
    value: Any = None
    error: str = ""
    message: str = ""

    def __str__(self):
        return f"{self.kind}: {self.error} {self.message}".strip()


def _send(conn, outcomes):
    # As bytes: torch's pickling of tensors hands over shared-memory handles that die with the child.
    buffer = io.BytesIO()
    torch.save(outcomes, buffer)
    conn.send_bytes(buffer.getvalue())


def _recv(conn):
    return torch.load(io.BytesIO(conn.recv_bytes()), weights_only=False)


def _child(conn, fn, args):
    try:
        _send(conn, _call_all(fn, args))
    except Exception:  # unpicklable results
        _send(conn, [Outcome("raised", error="ChildError", message=traceback.format_exc()[-2000:])] * len(args))
    finally:
        conn.close()


def fork_is_safe() -> bool:
    """Whether a child may be forked: not once CUDA has been initialised in this process."""
    return not torch.cuda.is_initialized()


def _call_all(fn: Callable, calls: Sequence[tuple]) -> List[Outcome]:
    outcomes = []
    for a in calls:
        try:
            outcomes.append(Outcome("ok", value=fn(*a)))
        except Exception as exc:  # an exception is a result here, judged by the caller
            outcomes.append(Outcome("raised", error=type(exc).__name__, message=str(exc)[:2000]))
    return outcomes


def _run_in_thread(fn: Callable, calls: Sequence[tuple], timeout: float) -> Optional[List[Outcome]]:
    """The calls in a daemon thread of this process (where fork is unsafe); None if they ran past ``timeout``."""
    box: List[List[Outcome]] = []
    worker = threading.Thread(target=lambda: box.append(_call_all(fn, calls)), daemon=True)
    worker.start()
    worker.join(timeout)
    return box[0] if box else None


def run_batch(fn: Callable, calls: Sequence[tuple], timeout: float) -> Optional[List[Outcome]]:
    """``fn(*a)`` for every ``a`` in ``calls`` in one child; None if the child crashed or ran past ``timeout``."""
    if not fork_is_safe():
        return _run_in_thread(fn, calls, timeout)
    parent, child = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(child, fn, list(calls)), daemon=True)
    proc.start()
    child.close()
    result = None
    if parent.poll(timeout):
        try:
            result = _recv(parent)
        except EOFError:  # the child died while sending
            result = None
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    parent.close()
    return result


def run_isolated(fn: Callable, *args, timeout: float = 120.0) -> Outcome:
    """``fn(*args)`` in a forked child: its result, the exception it raised, a crash or a hang."""
    if not fork_is_safe():
        outcomes = _run_in_thread(fn, [args], timeout)
        return outcomes[0] if outcomes else Outcome("hung", message=f"no result within {timeout:.0f} s")
    return _run_child(_FORK, fn, args, timeout)


def run_in_fresh_process(fn: Callable, *args, timeout: float = 300.0) -> Outcome:
    """``fn(*args)`` in a newly started (spawned) Python process, with its own CUDA context: for calls that may
    end in a CUDA device-side assertion, which leaves the context of the process it happens in unusable. ``fn``
    must be a module-level function (the child imports it by name) and ``args`` picklable; the child pays for
    importing torch and starting CUDA."""
    return _run_child(_SPAWN, fn, args, timeout)


def _run_child(context, fn: Callable, args: tuple, timeout: float) -> Outcome:
    parent, child = context.Pipe(duplex=False)
    proc = context.Process(target=_child, args=(child, fn, [args]), daemon=True)
    proc.start()
    child.close()
    if not parent.poll(timeout):
        proc.kill()
        proc.join()
        return Outcome("hung", message=f"no result within {timeout:.0f} s")
    try:
        (outcome,) = _recv(parent)
    except EOFError:
        proc.join()
        code = proc.exitcode
        name = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
        return Outcome("crashed", message=name)
    proc.join()
    return outcome
