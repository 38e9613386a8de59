"""Reference: the LANTERN latent-neighbour table (docs/ALGORITHMS.md §3.4)."""

import torch

from .._methods import ROW_BAD_PROB

_ROW_CHUNK = 128  # rows per distance block: bounds memory at chunk x N x D floats


def neighbor_table(codebook: torch.Tensor, k: int, *, normalize: bool = True) -> torch.Tensor:
    """k nearest codes of every code by ascending Euclidean distance, self excluded.

    ``codebook`` is ``(N, D)`` float; rows are L2-normalised first when ``normalize`` (the geometry the
    VQ decoder sees). Ties go to the lower code id. Returns int32 ``(N, k)``. A code whose codebook row holds
    NaN or inf is reported, not searched: its table row is ``-6`` (row status code 6, docs/ALGORITHMS.md §3.8);
    the other rows are computed as usual (distances to it are NaN and rank after every number).
    """
    emb = codebook.to(torch.float32)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    n = emb.shape[0]
    out = torch.empty(n, k, dtype=torch.int32, device=codebook.device)
    for start in range(0, n, _ROW_CHUNK):
        rows = emb[start : start + _ROW_CHUNK]
        dist = ((rows[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
        own = torch.arange(start, start + rows.shape[0], device=codebook.device)
        # A stable sort keeps equal distances in ascending id order (the tie rule; NaN distances, to a non-finite
        # code, rank after inf); then a stable sort on "is self" moves self behind everything, NaN included.
        order = torch.sort(dist, dim=-1, stable=True).indices
        is_self = order == own[:, None]
        order = order.gather(1, torch.sort(is_self.to(torch.int8), dim=-1, stable=True).indices)[:, :k]
        out[start : start + rows.shape[0]] = order.to(torch.int32)
    bad_row = ~torch.isfinite(codebook).all(dim=-1)  # one O(N * D) pass over the raw codebook
    return torch.where(bad_row[:, None], -ROW_BAD_PROB, out).to(torch.int32)


def neighbor_distances(codebook: torch.Tensor, table: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Squared distances ``(N, k)`` from every code to its table entries (used to compare tables at ties)."""
    emb = codebook.to(torch.float64)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return ((emb[:, None, :] - emb[table.long()]) ** 2).sum(-1)
