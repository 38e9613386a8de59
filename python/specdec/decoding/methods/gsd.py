"""Grouped Speculative Decoding (arXiv 2508.07747; docs/ALGORITHMS.md §2.3, 3.3): SJD's drafts and loop with the
group-level test ``verify_chain(method="gsd")``. Lossy."""

from typing import Optional, Tuple

import torch

from ...verifier import SpeculativeVerifier
from .sjd import SJD


class GSD(SJD):
    """SJD drafts verified by GSD's dynamic groups.

    Parameters
    ----------
    codebook : ``(vocab_size, dim)`` VQ codebook; its rows are L2-normalised here and passed as the embedding
        table of the distance filter (the project default, docs/ALGORITHMS.md §3.3).
    rank_window : ``(h_lo, h_hi)``; default scaled to the vocabulary
        (:func:`specdec.decoding.defaults.gsd_rank_window`).
    p_thr, d_thr : probability-gap and squared-distance filters (0.15 and 0.5 as released).
    """

    name = "gsd"

    def __init__(self, codebook: torch.Tensor, *, rank_window: Optional[Tuple[int, int]] = None,
                 p_thr: float = 0.15, d_thr: float = 0.5, window: int = 16, init: str = "random",
                 grid_width: Optional[int] = None):
        super().__init__(window=window, init=init, grid_width=grid_width)
        self.verifier = SpeculativeVerifier("gsd", codebook=codebook, rank_window=rank_window, p_thr=p_thr,
                                            d_thr=d_thr)
        kwargs = self.verifier.kernel_kwargs
        self.embeddings, self.rank_window = kwargs["embeddings"], kwargs["rank_window"]
        self.p_thr, self.d_thr = kwargs["p_thr"], kwargs["d_thr"]
