"""Reference: tree attention mask, depths and root-to-leaf paths from parent arrays (docs/ALGORITHMS.md §3.5)."""

from typing import List, Optional, Tuple

import torch


def build_tree(
    parents: torch.Tensor, num_nodes: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build ``(attn_mask [B, M, M] bool, position_ids [B, M] int64, retrieve_indices [B, P, D] int64)``.

    ``parents`` int64 ``(B, M)``: -1 for the root (node 0), ``parents[b, n] < n`` for valid nodes.
    ``attn_mask[b, i, j]`` is true iff j == i or j is an ancestor of i; ``position_ids`` is the depth
    (root 0); ``retrieve_indices[b, l]`` is the root-to-leaf path of the l-th leaf (childless valid node,
    ascending id), -1 padded. P is the largest leaf count and D the largest depth + 1 over the batch.
    Padding nodes (n >= num_nodes[b]) see only themselves, have position 0 and are on no path.
    """
    batch, m = parents.shape
    device = parents.device
    if num_nodes is None:
        num_nodes = torch.full((batch,), m, dtype=torch.int64)
    par = parents.tolist()
    sizes = num_nodes.tolist()
    mask = torch.eye(m, dtype=torch.bool).repeat(batch, 1, 1)
    depth = torch.zeros(batch, m, dtype=torch.int64)
    paths: List[List[List[int]]] = []
    for b in range(batch):
        n_b = sizes[b]
        has_child = [False] * n_b
        for n in range(1, n_b):
            parent = par[b][n]
            has_child[parent] = True
            mask[b, n] |= mask[b, parent]  # parent's ancestors (parent < n is already complete)
            depth[b, n] = depth[b, parent] + 1
        row_paths = []
        for leaf in range(n_b):
            if not has_child[leaf]:
                path = [leaf]
                while path[-1] != 0:
                    path.append(par[b][path[-1]])
                row_paths.append(path[::-1])
        paths.append(row_paths)
    num_paths = max((len(r) for r in paths), default=0)
    path_len = max((len(path) for r in paths for path in r), default=0)
    retrieve = torch.full((batch, num_paths, path_len), -1, dtype=torch.int64)
    for b, row_paths in enumerate(paths):
        for leaf_index, path in enumerate(row_paths):
            retrieve[b, leaf_index, : len(path)] = torch.tensor(path)
    return mask.to(device), depth.to(device), retrieve.to(device)
