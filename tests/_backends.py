"""Which backends a test run has, and the helpers the per-op tests share to run one case on each of them.

The backend lists are fixed when ``tests/conftest.py`` is imported (after it has chosen the Triton mode).
``reference`` is the oracle; the kernel backends are compared with it token for token.
"""

import contextlib
import os
from typing import Any, Optional

import pytest
import torch

import specdec_kernels

#: Every backend this run can use, in a fixed order.
ALL_BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in specdec_kernels.available_backends()]
#: The backends compared with the reference.
KERNEL_BACKENDS = [b for b in ALL_BACKENDS if b != "reference"]
#: Triton runs under its CPU interpreter (slow: tests keep those cases small).
TRITON_INTERPRETED = "triton" in ALL_BACKENDS and os.environ.get("TRITON_INTERPRET") == "1"


def device_for(backend: str) -> str:
    """The device a backend's inputs live on: CUDA for ``cuda`` and for compiled Triton, else the CPU."""
    if backend == "cuda" or (backend == "triton" and not TRITON_INTERPRETED):
        return "cuda"
    return "cpu"


def on_gpu(backend: str) -> bool:
    """Whether ``backend`` runs on a GPU in this run (real codebook sizes are affordable there)."""
    return device_for(backend) == "cuda"


def gpu_only(backend: str, **params) -> bool:
    """For ``@pytest.mark.select``: image-codebook sizes and many-token cases run where the backend is on a GPU."""
    return on_gpu(backend)


def not_triton(backend: str, **params) -> bool:
    """For ``@pytest.mark.select``: statistical, property and hypothesis tests run on the reference's peers in C++
    (cpu, cuda); Triton is held to them through parity on the same inputs."""
    return backend != "triton"


@contextlib.contextmanager
def raises_bad_row(match: Optional[str] = None):
    """``pytest.raises(ValueError, match=match)`` around default-level calls that must refuse a bad row, with the
    kernels' row codes checked on the host on every device, as the default level does on the CPU.

    On CUDA the default level checks them by an asynchronous device assertion instead (no host synchronisation),
    and a device-side assertion leaves the process's CUDA context unusable for every later test; the host check
    makes the same decision on the same codes and names the row. The device assertion itself runs in a fresh
    process (``test_hardening.test_compiled_validation_is_not_skipped``)."""
    from specdec_kernels import _validation

    saved = _validation.row_checks_are_async
    _validation.row_checks_are_async = lambda device: False
    try:
        with pytest.raises(ValueError, match=match) as info:
            yield info
    finally:
        _validation.row_checks_are_async = saved


def to_device(value: Any, device) -> Any:
    """``value`` with every tensor in it (also inside dicts, tuples and lists) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_same(got, want) -> None:
    """Every output equal, with the same dtype and shape (compared on the CPU)."""
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        g, w = g.cpu(), w.cpu()
        assert torch.equal(g, w), f"mismatch at {(g != w).nonzero()[:8].tolist()}\ngot:  {g.tolist()}\nwant: {w.tolist()}"


def run_both(op, backend: str, *args, **kwargs):
    """``(op on backend, op on the reference)`` for the same inputs: the backend's copy of every tensor argument
    lives on :func:`device_for` ``(backend)``, the reference's on the CPU."""
    device = device_for(backend)
    got = op(*to_device(args, device), **to_device(kwargs, device), backend=backend)
    want = op(*to_device(args, "cpu"), **to_device(kwargs, "cpu"), backend="reference")
    return got, want


def check_parity(op, backend: str, *args, **kwargs):
    """Run ``op`` on ``backend`` and on the reference, assert every output equal; return the reference's."""
    got, want = run_both(op, backend, *args, **kwargs)
    assert_same(got, want)
    return want
