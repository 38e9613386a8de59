"""Decoding methods sharing :func:`specdec.decoding.generate`; each is a small class.

=========== ===================================================== ======== =================
name        drafts                                                 exact    verification op
=========== ===================================================== ======== =================
ar          none                                                   yes      verify_chain (0 drafts)
sd          gamma tokens from a small AR draft model               yes      verify_chain exact
sjd         Jacobi window (15 drafts), random / repeat_left init   yes      verify_chain exact
gsd         SJD's drafts                                           no       verify_chain gsd
eagle2      EAGLE-2 dynamic tree from a draft head                 yes      verify_tree exact
lantern     eagle2's tree                                          no       verify_tree lantern (delta)
static      static tree, siblings drawn without replacement        yes      verify_tree exact (q)
lantern++   static tree                                            no       verify_tree lantern (lam)
=========== ===================================================== ======== =================
"""

from .ar import AR
from .base import ChainMethod, Method
from .eagle2 import Eagle2
from .gsd import GSD
from .lantern import Lantern, LanternPP
from .sd import SD
from .sjd import SJD
from .static_tree import StaticTreeMethod
from .tree import TreeMethod

METHODS = {
    "ar": AR,
    "sd": SD,
    "sjd": SJD,
    "gsd": GSD,
    "eagle2": Eagle2,
    "lantern": Lantern,
    "static": StaticTreeMethod,
    "lantern++": LanternPP,
}


def make_method(name: str, *, draft_model=None, head=None, codebook=None, **options) -> Method:
    """Build a method by name; ``draft_model`` (sd), ``head`` (tree methods) and ``codebook`` (gsd, lantern,
    lantern++) are passed where that method needs them, ``options`` go to its constructor."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    cls = METHODS[name]
    if name == "sd":
        return cls(_need(draft_model, "draft_model", name), **options)
    if name in ("eagle2", "static"):
        return cls(_need(head, "head", name), **options)
    if name in ("lantern", "lantern++"):
        return cls(_need(head, "head", name), _need(codebook, "codebook", name), **options)
    if name == "gsd":
        return cls(_need(codebook, "codebook", name), **options)
    return cls(**options)


def _need(value, what: str, name: str):
    if value is None:
        raise ValueError(f"method {name!r} needs {what}")
    return value


__all__ = ["AR", "SD", "SJD", "GSD", "Eagle2", "Lantern", "LanternPP", "StaticTreeMethod", "Method", "ChainMethod",
           "TreeMethod", "METHODS", "make_method"]
