"""Route one op call to its backend implementation."""

import importlib
from typing import Callable

import torch

from .._backend import resolve_backend, torch_op


def run(name: str, backend: str, device: torch.device, reference: Callable[[], object], op_args: tuple):
    """Run op ``name`` on ``backend``: ``reference()`` for the pure-PyTorch semantics, otherwise the
    registered ``torch.ops`` op (CPU / CUDA dispatch) or the Triton launcher ``triton.<name>.<name>_triton``,
    both taking ``op_args`` in schema order."""
    chosen = resolve_backend(backend, device)
    if chosen == "reference":
        return reference()
    if chosen == "triton":
        module = importlib.import_module(f"specdec_kernels.triton.{name}")
        return getattr(module, f"{name}_triton")(*op_args)
    return torch_op(name)(*op_args)
