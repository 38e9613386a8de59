"""Which backends this install has, and which one a call runs on."""

import importlib.util
import os
from typing import List

import torch

from ._constants import BACKENDS, NAMESPACE

try:  # importing the extension runs its TORCH_LIBRARY registrations
    from . import _C  # noqa: F401

    _HAS_EXTENSION = True
    _EXTENSION_ERROR = ""
except ImportError as exc:  # a source checkout that was never built
    _HAS_EXTENSION = False
    _EXTENSION_ERROR = str(exc)


# Facts fixed for the life of the process, computed once so that the wrappers trace under torch.compile.
_HAS_CUDA_KERNELS = _HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
    f"{NAMESPACE}::verify_chain", "CUDA"
)
_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton chooses interpreter or compiler when a kernel module is imported, so the flag is read once too.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TRITON_USABLE = _HAS_TRITON and (torch.cuda.is_available() or _TRITON_INTERPRET)


def _has_cuda_kernels() -> bool:
    return _HAS_CUDA_KERNELS


def _triton_usable() -> bool:
    return _TRITON_USABLE


def available_backends() -> List[str]:
    """Backends this install can run: always ``"reference"``; ``"cpu"`` when the C++ extension is built;
    ``"cuda"`` when it was built with CUDA kernels and a GPU is visible; ``"triton"`` when Triton imports and
    either a GPU is visible or the Triton interpreter is on (``TRITON_INTERPRET=1``, CPU tensors)."""
    found = ["reference"]
    if _HAS_EXTENSION:
        found.append("cpu")
    if _has_cuda_kernels() and torch.cuda.is_available():
        found.append("cuda")
    if _triton_usable():
        found.append("triton")
    return found


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for tensors on ``device``; raise a clear
    error if the requested one is missing or cannot run on that device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            if _has_cuda_kernels():
                return "cuda"
            return "triton" if _triton_usable() else "reference"
        return "cpu" if _HAS_EXTENSION else "reference"
    if backend == "reference":
        return backend
    if backend == "cpu" and _HAS_EXTENSION and not on_cuda:  # the hot path: no further probing
        return backend
    if backend == "triton" and _TRITON_USABLE and (on_cuda or _TRITON_INTERPRET):
        return backend
    if backend not in available_backends():
        hint = f" (extension import failed: {_EXTENSION_ERROR})" if not _HAS_EXTENSION else ""
        raise RuntimeError(f"backend {backend!r} is not available here; available: {available_backends()}{hint}")
    if backend == "cpu" and on_cuda:
        raise ValueError("backend 'cpu' needs CPU tensors, got tensors on " + str(device))
    if backend == "cuda" and not on_cuda:
        raise ValueError("backend 'cuda' needs CUDA tensors, got tensors on " + str(device))
    if backend == "triton" and not on_cuda and not _TRITON_INTERPRET:
        raise ValueError("backend 'triton' on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1)")
    return backend


def torch_op(name: str):
    """The registered ``torch.ops.specdec_kernels.<name>`` overload (CPU and CUDA share it)."""
    return getattr(getattr(torch.ops, NAMESPACE), name).default
