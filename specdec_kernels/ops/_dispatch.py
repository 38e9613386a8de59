"""Route one op call to its backend implementation, by explicit tables (no import strings), so every route
traces under ``torch.compile(fullgraph=True)``."""

from typing import Callable

import torch

from .._backend import resolve_backend, torch_op
from ..triton._registry import OPS as TRITON_OPS


def run(name: str, backend: str, device: torch.device, reference: Callable[[], object], op_args: tuple):
    """Run op ``name`` on ``backend``: ``reference()`` for the pure-PyTorch semantics, the registered C++ op
    (``torch.ops.specdec_kernels.<name>``: CPU / CUDA dispatch) or the registered Triton op
    (``torch.ops.specdec_kernels_triton.<name>``, ``TRITON_OPS``), both taking ``op_args`` in schema order."""
    chosen = resolve_backend(backend, device)
    if chosen == "reference":
        return reference()
    if chosen == "triton":
        if name not in TRITON_OPS:
            raise NotImplementedError(f"{name} has no Triton kernel yet; use backend='cpu', 'cuda' or 'reference'")
        return TRITON_OPS[name](*op_args)
    return torch_op(name)(*op_args)

