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
    p_thr, d_thr : probability-gap and squared-distance filters (default: the method table's, 0.15 and 0.5 as
        released).
    window, init, grid_width, coupled, fused : SJD's.
    """

    name = "gsd"

    def __init__(self, codebook: torch.Tensor, *, rank_window: Optional[Tuple[int, int]] = None,
                 p_thr: Optional[float] = None, d_thr: Optional[float] = None, window: int = 16, init: str = "random",
                 grid_width: Optional[int] = None, coupled: bool = False, fused: bool = True):
        super().__init__(window=window, init=init, grid_width=grid_width, coupled=coupled, fused=fused)
        self.verifier = SpeculativeVerifier("gsd", codebook=codebook, rank_window=rank_window, p_thr=p_thr,
                                            d_thr=d_thr)
        kwargs = self.verifier.kernel_kwargs
        self.embeddings, self.rank_window = kwargs["embeddings"], kwargs["rank_window"]
        self.p_thr, self.d_thr = kwargs["p_thr"], kwargs["d_thr"]


class StaticClusterGSD(GSD):
    """GSD over *fixed* groups: k-means clusters of about ``group_size`` codebook entries (docs/ALGORITHMS.md §5.3).

    A rule that needs no kernel change: the kernels' ``"gsd"`` method with an embedding table of cluster
    indicators. Each cluster gets one random unit vector (``dim``-d, redrawn until every pair of clusters is
    farther apart than the distance filter) and every code its cluster's vector; with a rank window covering the
    vocabulary and ``p_thr`` = 2 (never binding), the group of a draft is exactly its cluster.

    Parameters
    ----------
    codebook : ``(vocab_size, dim)`` VQ codebook; its L2-normalised rows are clustered (scipy's k-means++).
    group_size : codes per cluster, about (``vocab_size // group_size`` clusters, at least one).
    seed : seeds the clustering and the cluster vectors.
    window, init, grid_width : SJD's (Jacobi window, initialisation, grid width).
    """

    name = "gsd-static"

    def __init__(self, codebook: torch.Tensor, *, group_size: int = 8, seed: int = 0, dim: int = 64,
                 window: int = 16, init: str = "repeat_left", grid_width: Optional[int] = None):
        from scipy.cluster.vq import kmeans2

        vocab = codebook.shape[0]
        num_clusters = max(1, vocab // max(1, int(group_size)))
        points = torch.nn.functional.normalize(codebook.double().cpu(), dim=-1).numpy()
        _, labels = kmeans2(points, num_clusters, minit="++", seed=seed)
        gen = torch.Generator().manual_seed(seed)
        d_thr = 0.5
        for _ in range(100):
            centers = torch.nn.functional.normalize(torch.randn(num_clusters, dim, generator=gen), dim=-1)
            gram = centers @ centers.T - 2 * torch.eye(num_clusters)
            if num_clusters == 1 or float(2 - 2 * gram.max()) > 2 * d_thr:
                break
        else:  # pragma: no cover - 64-d random directions are nearly orthogonal
            raise RuntimeError("could not separate the cluster vectors")
        table = centers[torch.as_tensor(labels, dtype=torch.int64)].to(codebook.device)
        # GSD normalises its codebook argument into the embeddings: the unit cluster vectors pass unchanged.
        super().__init__(table, rank_window=(vocab, vocab), p_thr=2.0, d_thr=d_thr, window=window, init=init,
                         grid_width=grid_width)
        self.group_size, self.seed = int(group_size), int(seed)


class MCGSD(GSD):
    """GSD on coupled Jacobi drafts (MC-SJD's refresh, ``coupled=True``) — the group test on drafts that change only
    where the target's row moved."""

    name = "mc-gsd"

    def __init__(self, codebook: torch.Tensor, **kwargs):
        super().__init__(codebook, coupled=True, **kwargs)
