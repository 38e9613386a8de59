"""Decoding methods sharing :func:`specdec.decoding.generate`; each is a small class, registered below.

The registrations are the one list of methods: :func:`make_method`, ``specdec demo`` (``demo=True``, in this
order), ``specdec sweep`` (``sweep=`` knobs) and the CLI read it. :func:`method_table` prints it. Adding a
method: write the class (``name``, ``propose`` / ``draft_tree``, and a ``verifier`` for a non-exact rule), then add one ``register``
line here (docs/CONTRIBUTING.md).
"""

from .ar import AR
from .base import ChainMethod, Method
from .eagle2 import Eagle2
from .gsd import GSD, MCGSD, StaticClusterGSD
from .lantern import Lantern, LanternPP
from .registry import (REGISTRY, ClassView, MethodSpec, SweepKnob, demo_methods, make_method, method_names,
                       method_table, register, sweep_knobs)
from .sd import SD
from .sjd import MCSJD, SJD
from .static_tree import StaticTreeMethod
from .tree import TreeMethod


def _jacobi_inits(family: str) -> SweepKnob:
    """Both Jacobi inits: random (Lumina-mGPT default) and repeat-left (LlamaGen's ``repeat_horizon``)."""
    return SweepKnob("init", ("random", "repeat_left"), lambda init: {"init": init}, kind="init", family=family)


register(AR, exact=True, drafts="none", verification="verify_chain, 0 drafts")
register(SD, needs=("draft_model",), exact=True, drafts="gamma tokens from a small AR draft model",
         verification="verify_chain exact")
register(SJD, exact=True, drafts="Jacobi window (15 drafts), random / repeat_left init",
         verification="verify_chain exact", sweep=[_jacobi_inits("sjd init")])
register(GSD, needs=("codebook",), exact=False, drafts="SJD's drafts", verification="verify_chain gsd",
         sweep=[_jacobi_inits("gsd init"),
                SweepKnob("G", "group_sizes", lambda g: {"rank_window": (g // 2, g // 2)}, kind="group")])
register(Eagle2, needs=("head",), exact=True, drafts="EAGLE-2 dynamic tree from a draft head",
         verification="verify_tree exact")
register(Lantern, needs=("head", "codebook"), exact=False, drafts="eagle2's tree",
         verification="verify_tree lantern (delta)", sweep=[SweepKnob("delta", "deltas", lambda d: {"delta": d})])
register(StaticTreeMethod, needs=("head",), exact=True, demo=False,
         drafts="static tree, siblings drawn without replacement", verification="verify_tree exact (q)")
register(LanternPP, needs=("head", "codebook"), exact=False, drafts="static tree",
         verification="verify_tree lantern (lam)", sweep=[SweepKnob("lambda", "lambdas", lambda lam: {"lam": lam})])
register(MCSJD, exact=True, drafts="SJD's window, refreshed by maximal coupling with the previous iteration",
         verification="verify_chain exact (jacobi_step, coupled refresh)", sweep=[_jacobi_inits("mc-sjd init")])
register(MCGSD, needs=("codebook",), exact=False, demo=False, drafts="MC-SJD's coupled drafts",
         verification="verify_chain gsd (jacobi_step, coupled refresh)")
register(StaticClusterGSD, needs=("codebook",), exact=False, demo=False, drafts="SJD's drafts (repeat_left)",
         verification="verify_chain gsd over fixed k-means clusters")

#: ``name -> class`` for every registered method (a live, read-only view of the registry).
METHODS = ClassView()

__all__ = ["AR", "SD", "SJD", "MCSJD", "GSD", "MCGSD", "StaticClusterGSD", "Eagle2", "Lantern", "LanternPP", "StaticTreeMethod", "Method", "ChainMethod",
           "TreeMethod", "METHODS", "REGISTRY", "MethodSpec", "SweepKnob", "register", "make_method", "method_names",
           "demo_methods", "sweep_knobs", "method_table"]
