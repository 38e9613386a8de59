"""Triton tree buffers: ancestor mask, depths and root-to-leaf paths.

Grid: one program per tree b; vectors of BLOCK_M >= M node slots. Pointers (contiguous): parents [B, M] int64,
num_nodes [B] int64; written: mask [B, M, M] (bool storage as uint8), depth [B, M] int64, paths [B, M, M] int64
(a fixed-size buffer: leaf l's path in row l, -1 padded) and stats [B, 2] int64 (leaf count, deepest depth).
Per tree: has-child flags from one pass over the parents, leaf order by an exclusive prefix sum, then for every node
a walk up its ancestors (parents read from global memory) that yields its mask row, its depth and, for a leaf, its
path (ancestor a goes to column depth(a)). Padding nodes (n >= num_nodes[b]) see only themselves at depth 0.
The launcher then trims paths to [B, P, D] with P = most leaves and D = deepest depth + 1: the op's one host
synchronisation (one two-element read of the per-tree stats), since P and D are data-dependent.
Row status codes (docs/ALGORITHMS.md §3.8): a tree with num_nodes[b] outside [1, M] (1) or malformed parents among
its valid nodes (3) is not walked: its mask row is all False, its depths are -code, it has no paths and counts
as 0 leaves / depth 0. Every parent read is a checked id, and every walk is bounded by M steps anyway.
"""

import torch
import triton
import triton.language as tl

from . import _common as c


@triton.jit(do_not_specialize=["M"])
def _build_tree_kernel(par_ptr, num_nodes_ptr, mask_ptr, depth_ptr, paths_ptr, stats_ptr, M, BLOCK_M: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n_b = tl.load(num_nodes_ptr + b)
    par_row = par_ptr + b * M
    paths_b = paths_ptr + b * M * M
    idx = tl.arange(0, BLOCK_M)
    in_m = idx < M

    # Row status: 1 num_nodes outside [1, M]; 3 parents[b, 0] != -1 or a valid node's parent outside [0, n).
    n_valid = tl.minimum(tl.maximum(n_b, 1), M)
    par = tl.load(par_row + idx, mask=in_m, other=0)
    edge_bad = (idx > 0) & (idx < n_valid) & ((par < 0) | (par >= idx))
    status = tl.where((tl.max(edge_bad.to(tl.int32), 0) != 0) | (tl.load(par_row) != -1), c.ROW_BAD_PARENTS, 0)
    status = tl.where((n_b < 1) | (n_b > M), c.ROW_BAD_COUNT, status)
    n_b = tl.where(status == 0, n_b, 0)  # a bad row walks nothing

    has_child = tl.zeros([BLOCK_M], tl.int32)
    for n in range(1, n_b):
        has_child = has_child | (idx == tl.load(par_row + n)).to(tl.int32)
    leaf = ((idx < n_b) & (has_child == 0)).to(tl.int32)
    leaf_pos = tl.cumsum(leaf, 0) - leaf  # the l-th leaf in ascending id fills paths row l
    for row in range(M):
        tl.store(paths_b + row * M + idx, tl.full([BLOCK_M], -1, tl.int64), mask=in_m)
    tl.debug_barrier()

    max_depth = tl.zeros((), tl.int32)
    for n in range(M):
        on_path = idx == n
        up = tl.zeros([BLOCK_M], tl.int32)  # steps from n up to each ancestor
        a = tl.zeros((), tl.int64) + n
        d = tl.zeros((), tl.int32)
        go = (a < n_b) & (a > 0)
        while go:
            a = tl.load(par_row + a)
            d += 1
            on_path = on_path | (idx == a)
            up = tl.where(idx == a, d, up)
            go = (a > 0) & (d < M)
        tl.store(mask_ptr + (b * M + n) * M + idx, on_path.to(tl.uint8), mask=in_m)
        tl.store(depth_ptr + b * M + n, d.to(tl.int64))
        max_depth = tl.maximum(max_depth, d)
        if tl.sum(tl.where(idx == n, leaf, 0), 0) > 0:
            slot = tl.sum(tl.where(idx == n, leaf_pos, 0), 0)
            tl.store(paths_b + slot * M + (d - up), idx.to(tl.int64), mask=on_path & in_m)
    if status != 0:  # a bad row: no visible position, depths -code (its paths stayed -1, it counts no leaf)
        for n in range(M):
            tl.store(mask_ptr + (b * M + n) * M + idx, tl.zeros([BLOCK_M], tl.uint8), mask=in_m)
        tl.store(depth_ptr + b * M + idx, tl.full([BLOCK_M], 0, tl.int64) - status.to(tl.int64), mask=in_m)
    tl.store(stats_ptr + b * 2, tl.sum(leaf, 0).to(tl.int64))
    tl.store(stats_ptr + b * 2 + 1, max_depth.to(tl.int64))


def build_tree_triton(parents, num_nodes):
    """Launcher with the ``build_tree`` op schema; returns ``(attn_mask [B, M, M] bool, position_ids [B, M] int64,
    retrieve_indices [B, P, D] int64)``. Synchronises with the host once to read P and D."""
    parents = parents.contiguous()
    batch, nodes = parents.shape
    device = parents.device
    mask = torch.empty(batch, nodes, nodes, dtype=torch.bool, device=device)
    depth = torch.empty(batch, nodes, dtype=torch.int64, device=device)
    if batch == 0 or nodes == 0:
        return mask, depth, torch.empty(batch, 0, 0, dtype=torch.int64, device=device)
    paths = torch.empty(batch, nodes, nodes, dtype=torch.int64, device=device)
    stats = torch.empty(batch, 2, dtype=torch.int64, device=device)
    block_m = c.next_pow2(nodes)
    with c.on_device(parents):
        _build_tree_kernel[(batch,)](parents, num_nodes.contiguous(), mask.view(torch.uint8), depth, paths, stats,
                                     nodes, BLOCK_M=block_m, **c.launch_options(block_m))
    num_paths, deepest = stats.amax(0).tolist()  # the one host synchronisation
    path_len = deepest + 1 if num_paths > 0 else 0  # no good row: no paths at all, as in the reference
    return mask, depth, paths[:, :num_paths, :path_len].contiguous()
