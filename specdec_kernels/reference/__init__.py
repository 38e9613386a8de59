"""Pure-PyTorch reference implementations: the semantics of record (docs/ALGORITHMS.md §3).

Every backend (C++ CPU, Triton, CUDA) must reproduce these functions token for token given the same
inputs and uniforms. They are written for clarity; the public ops in :mod:`specdec_kernels` validate
inputs and dispatch to a backend, and ``backend="reference"`` routes here.
"""

from .build_tree import build_tree
from .cspd_verify import cspd_verify
from .gsd_group_mass import gsd_group_mass
from .jacobi_step import jacobi_step
from .lantern_relaxed_mass import lantern_relaxed_mass
from .neighbor_table import neighbor_table
from .sample_from_probs import sample_from_probs
from .verify_chain import verify_chain
from .verify_tree import verify_tree
from ._sampling import inverse_cdf

__all__ = [
    "build_tree",
    "cspd_verify",
    "gsd_group_mass",
    "inverse_cdf",
    "jacobi_step",
    "lantern_relaxed_mass",
    "neighbor_table",
    "sample_from_probs",
    "verify_chain",
    "verify_tree",
]
