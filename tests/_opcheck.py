"""opcheck of the registered op behind a public call, on the backend that call runs on.

The public wrapper is called once under a dispatch mode that records the ``specdec_kernels`` op it reaches (the C++
op for ``cpu`` / ``cuda``, the registered Triton op for ``triton``) with the exact arguments the op received, so the
check follows the op schemas wherever they change; then :func:`torch.library.opcheck` runs on that call.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _backends import device_for, to_device


class _OpRecorder(TorchDispatchMode):
    """Records every call of an op in a ``specdec_kernels*`` namespace (ops called inside it are not seen)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace.startswith("specdec_kernels"):
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def opcheck_public_call(public_op, backend: str, *args, **kwargs) -> None:
    """Call ``public_op(*args, backend=backend, **kwargs)`` (tensors moved to the backend's device), then opcheck the
    registered op it dispatched to."""
    device = device_for(backend)
    args, kwargs = to_device(args, device), to_device(kwargs, device)
    with _OpRecorder() as recorder:
        public_op(*args, backend=backend, **kwargs)
    if not recorder.calls:
        pytest.skip(f"the {backend!r} backend reaches no registered op in this build")
    func, op_args, op_kwargs = recorder.calls[0]
    torch.library.opcheck(func, op_args, op_kwargs)
