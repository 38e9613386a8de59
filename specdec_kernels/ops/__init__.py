"""Typed, documented wrappers over the registered ops; one module per op family."""

from .cspd_verify import cspd_verify
from .gsd_group_mass import gsd_group_mass
from .neighbors import lantern_relaxed_mass, neighbor_table
from .sample_from_probs import sample_from_probs
from .verify_chain import verify_chain
from .verify_tree import build_tree, verify_tree

__all__ = [
    "build_tree",
    "cspd_verify",
    "gsd_group_mass",
    "lantern_relaxed_mass",
    "neighbor_table",
    "sample_from_probs",
    "verify_chain",
    "verify_tree",
]
