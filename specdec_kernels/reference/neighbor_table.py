"""Reference: the LANTERN latent-neighbour table (docs/ALGORITHMS.md §3.4)."""

import torch

_ROW_CHUNK = 128  # rows per distance block: bounds memory at chunk x N x D floats


def neighbor_table(codebook: torch.Tensor, k: int, *, normalize: bool = True) -> torch.Tensor:
    """k nearest codes of every code by ascending Euclidean distance, self excluded.

    ``codebook`` is ``(N, D)`` float; rows are L2-normalised first when ``normalize`` (the geometry the
    VQ decoder sees). Ties go to the lower code id. Returns int32 ``(N, k)``.
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
        dist[torch.arange(rows.shape[0]), own] = float("inf")
        # A stable sort keeps equal distances in ascending id order: the tie rule.
        order = torch.sort(dist, dim=-1, stable=True).indices[:, :k]
        out[start : start + rows.shape[0]] = order.to(torch.int32)
    return out


def neighbor_distances(codebook: torch.Tensor, table: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Squared distances ``(N, k)`` from every code to its table entries (used to compare tables at ties)."""
    emb = codebook.to(torch.float64)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return ((emb[:, None, :] - emb[table.long()]) ** 2).sum(-1)
