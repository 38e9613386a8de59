"""specdec_kernels: fused verification kernels for speculative decoding of autoregressive image models.

Glossary (vLLM's vocabulary): *accepted* tokens are drafts that passed the test; the *recovered* token is
the residual sample at the first rejection; the *bonus* token is sampled from the last row when every
draft was accepted. Randomness enters only through uniform tensors passed in by the caller.

Every op takes ``backend="auto" | "reference" | "cpu" | "triton" | "cuda"``; :func:`available_backends`
lists what this install has. :mod:`specdec_kernels.reference` holds the pure-PyTorch semantics of record.
"""

from . import _backend, reference
from ._backend import available_backends
from .ops import (
    build_tree,
    cspd_verify,
    gsd_group_mass,
    lantern_relaxed_mass,
    neighbor_table,
    sample_from_probs,
    verify_chain,
    verify_tree,
)
from .ops.jacobi_step import JacobiStep, jacobi_step
from .ops.verify_logits import process_logits, verify_chain_logits, verify_tree_logits

from . import _fake

if _backend._HAS_EXTENSION:
    _fake._register()
_fake._register_triton()  # the Triton backend's ops exist whether or not Triton is installed (imported on use)

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "build_tree",
    "cspd_verify",
    "gsd_group_mass",
    "jacobi_step",
    "JacobiStep",
    "lantern_relaxed_mass",
    "neighbor_table",
    "process_logits",
    "reference",
    "sample_from_probs",
    "verify_chain",
    "verify_chain_logits",
    "verify_tree",
    "verify_tree_logits",
]
