"""LANTERN (arXiv 2410.03355) on EAGLE-2 trees, and LANTERN++ (arXiv 2502.06352) on a static tree: relaxed
acceptance through ``verify_tree(method="lantern")`` with a latent neighbour table (docs/ALGORITHMS.md §2.4, 3.4)."""

from typing import Optional, Sequence, Tuple

import torch

from ...verifier import SpeculativeVerifier
from ..defaults import (EAGLE_DEPTH, EAGLE_TOP_K, EAGLE_TOTAL_TOKENS, LANTERN_DELTA, LANTERNPP_K, LANTERNPP_LAMBDA,
                        lantern_k)
from .eagle2 import Eagle2
from .static_tree import StaticTreeMethod


class Lantern(Eagle2):
    """EAGLE-2 dynamic tree verified with LANTERN's delta relaxation (``delta = 0`` is exactly ``eagle2``).

    codebook : ``(vocab_size, dim)`` VQ codebook; the neighbour table is ``neighbor_table(codebook, k)`` on
        L2-normalised rows, built once here. ``k`` defaults to ``vocab_size // 16`` (:mod:`..defaults`).
    delta : TV budget per test (default 0.1); or pass ``lam`` for the LANTERN++ ratio rule on this tree.
    """

    name = "lantern"

    def __init__(self, head, codebook: torch.Tensor, *, delta: Optional[float] = LANTERN_DELTA,
                 lam: Optional[float] = None, k: Optional[int] = None, total_tokens: int = EAGLE_TOTAL_TOKENS,
                 depth: int = EAGLE_DEPTH, top_k: int = EAGLE_TOP_K):
        super().__init__(head, total_tokens=total_tokens, depth=depth, top_k=top_k)
        if lam is not None:
            delta = None
        vocab = codebook.shape[0]
        self.k = lantern_k(vocab) if k is None else min(int(k), vocab - 1)
        self.verifier = SpeculativeVerifier("lantern", codebook=codebook, k=self.k, delta=delta, lam=lam)
        self.neighbors = self.verifier.kernel_kwargs["neighbors"]
        self.delta, self.lam = delta, lam


class LanternPP(StaticTreeMethod):
    """LANTERN++: a static tree whose siblings are drawn without replacement from the head's q, verified with
    the ratio relaxation ``lam`` (``lam = 1`` is exactly the exact static tree)."""

    name = "lantern++"

    def __init__(self, head, codebook: torch.Tensor, *, lam: float = LANTERNPP_LAMBDA, k: int = LANTERNPP_K,
                 choices: Optional[Sequence[Tuple[int, ...]]] = None):
        super().__init__(head, choices=choices)
        vocab = codebook.shape[0]
        self.k = min(int(k), vocab - 1)
        self.lam = float(lam)
        self.verifier = SpeculativeVerifier("lantern", codebook=codebook, k=self.k, lam=self.lam)
        self.neighbors = self.verifier.kernel_kwargs["neighbors"]
