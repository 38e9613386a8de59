"""Run a call in a forked child process, so that a crash (a signal) or a hang is a result, not a dead test run.

The child inherits the imported modules (fork), so a call costs a fork, not an import of torch. Intra-op threads
are pinned to one: a forked child must not inherit a busy OpenMP pool.
"""

import io
import multiprocessing
import signal
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

torch.set_num_threads(1)

_FORK = multiprocessing.get_context("fork")


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
        outcomes = []
        for a in args:
            try:
                outcomes.append(Outcome("ok", value=fn(*a)))
            except Exception as exc:  # an exception is a result here, judged by the caller
                outcomes.append(Outcome("raised", error=type(exc).__name__, message=str(exc)[:2000]))
        _send(conn, outcomes)
    except Exception:  # unpicklable results
        _send(conn, [Outcome("raised", error="ChildError", message=traceback.format_exc()[-2000:])] * len(args))
    finally:
        conn.close()


def run_batch(fn: Callable, calls: Sequence[tuple], timeout: float) -> Optional[List[Outcome]]:
    """``fn(*a)`` for every ``a`` in ``calls`` in one child; None if the child crashed or ran past ``timeout``."""
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
    parent, child = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(child, fn, [args]), daemon=True)
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
