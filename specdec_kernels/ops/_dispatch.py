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
        return TRITON_OPS[name](*op_args)
    if not _CPP_PACKED:
        op_args = _legacy_args(name, op_args)
    return torch_op(name)(*op_args)


# Transitional: a C++ extension built before the packed-params schemas (docs/ALGORITHMS.md §3.8) takes every
# method parameter as its own argument; convert until the extension is rebuilt.
def _cpp_takes_packed_params() -> bool:
    from .._backend import _HAS_EXTENSION

    if not _HAS_EXTENSION:
        return True
    return any(a.name == "params" for a in torch_op("verify_chain")._schema.arguments)


_CPP_PACKED = _cpp_takes_packed_params()


def _legacy_args(name: str, args: tuple) -> tuple:
    from .. import _methods

    if name == "verify_chain":
        p, q, draft, u_accept, u_sample, num_drafts, code, neighbors, embeddings, params = args
        clean = _methods.unpack_params(_methods.BY_CODE[code], params)
        h_lo, h_hi = clean.get("rank_window", (7, 6))
        return (p, q, draft, u_accept, u_sample, num_drafts, code, neighbors, clean.get("delta"), clean.get("lam"),
                embeddings, h_lo, h_hi, clean.get("p_thr", 0.15), clean.get("d_thr", 0.5))
    if name == "verify_tree":
        p, q, tokens, parents, u_accept, u_sample, num_nodes, code, neighbors, params = args
        clean = _methods.unpack_params(_methods.BY_CODE[code], params)
        return (p, q, tokens, parents, u_accept, u_sample, num_nodes, code, neighbors, clean.get("delta"),
                clean.get("lam"))
    return args
