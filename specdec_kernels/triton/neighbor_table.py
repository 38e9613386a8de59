"""Triton LANTERN neighbour table: tiled squared distances plus a per-row top-k with the id tie-break.

Two launches (the table is built once per model, never per step):
  _normalize_kernel: one program per BLOCK_R codes; codebook [N, D] f32 -> rows / max(||row||, 1e-12) [N, D] f32
    (sequential float32 sum of squares, IEEE sqrt and division). Skipped when normalize is false.
  _neighbor_table_kernel: one program per BLOCK_I codes (rows); loops over column tiles of BLOCK_K codes. A tile's
    squared distances (sequential float32 over D) are packed with the column id into int64 keys
    (float bits << 32 | id: for distances >= 0 the key order is distance, then lower id) with self and padding set to
    INT64_MAX; the tile is sorted and merged into the running sorted buffer of the BLOCK_K smallest keys by
    min(buffer, reversed tile) (a bitonic merge step) and a re-sort. Writes table [N, K] int32 (the first K ids).
    A NaN distance gets the canonical positive NaN bits, so it ranks after inf (a NaN with the sign bit set, as
    inf - inf gives on x86, would otherwise make a negative key that ranks first).
  _mark_non_finite_rows_kernel: one program per BLOCK_R codes; a code whose raw codebook row holds NaN / inf gets the
    table row -6 (row status code 6; one O(N * D) pass).
Invariants: 1 <= K <= N - 1 <= BLOCK_K * tiles. Every loop runs a trip count fixed by N, D and K (no loop condition
reads a value), so no codebook value can keep the kernels from ending.
"""

import torch
import triton
import triton.language as tl

from . import _common as c

NAN_BITS: tl.constexpr = tl.constexpr(0x7FC00000)  # the canonical (positive) float32 NaN


@triton.jit(do_not_specialize=["N", "D"])
def _normalize_kernel(emb_ptr, out_ptr, N, D, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < N
    sq = tl.zeros([BLOCK_R], tl.float32)
    for d in range(D):
        v = tl.load(emb_ptr + rows * D + d, mask=rm, other=0.0)
        sq = sq + v * v
    norm = tl.maximum(tl.sqrt_rn(sq), 1e-12)
    for d in range(D):
        v = tl.load(emb_ptr + rows * D + d, mask=rm, other=0.0)
        tl.store(out_ptr + rows * D + d, tl.div_rn(v, norm), mask=rm)


@triton.jit(do_not_specialize=["N", "D", "K"])
def _neighbor_table_kernel(emb_ptr, out_ptr, N, D, K, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    rm = rows < N
    cols0 = tl.arange(0, BLOCK_K).to(tl.int64)  # int64 ids: cols * D overflows int32 once N * D >= 2^31
    best = tl.full([BLOCK_I, BLOCK_K], c.INT64_MAX, tl.int64)
    for j0 in range(0, N, BLOCK_K):
        cols = j0 + cols0  # int64
        cm = cols < N
        dist = tl.zeros([BLOCK_I, BLOCK_K], tl.float32)
        for d in range(D):
            ei = tl.load(emb_ptr + rows * D + d, mask=rm, other=0.0)
            ej = tl.load(emb_ptr + cols * D + d, mask=cm, other=0.0)
            diff = ei[:, None] - ej[None, :]
            dist = dist + diff * diff
        bits = tl.where(dist == dist, dist.to(tl.int32, bitcast=True), NAN_BITS)
        key = (bits.to(tl.int64) << 32) | cols[None, :]
        valid = rm[:, None] & cm[None, :] & (rows[:, None] != cols[None, :])
        key = tl.where(valid, key, c.INT64_MAX)
        best = tl.sort(tl.minimum(best, tl.flip(tl.sort(key, 1), 1)), 1)
    ids = (best & c.LOW32).to(tl.int32)
    tl.store(out_ptr + rows[:, None] * K + cols0[None, :], ids, mask=rm[:, None] & (cols0[None, :] < K))


@triton.jit(do_not_specialize=["N", "D", "K"])
def _mark_non_finite_rows_kernel(codebook_ptr, out_ptr, N, D, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < N
    bad = tl.zeros([BLOCK_R], tl.int1)
    for d in range(D):
        bad = bad | (rm & c.non_finite(tl.load(codebook_ptr + rows * D + d, mask=rm, other=0.0)))
    code = tl.full([BLOCK_R, BLOCK_K], -c.ROW_BAD_PROB, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + rows[:, None] * K + ks[None, :], code, mask=bad[:, None] & (ks[None, :] < K))


def neighbor_table_triton(codebook, k, normalize):
    """Launcher with the ``neighbor_table`` op schema; returns the ``(N, k)`` int32 table."""
    emb = codebook.contiguous()
    n, dim = emb.shape
    k = int(k)
    table = torch.empty(n, k, dtype=torch.int32, device=emb.device)
    if n == 0 or k == 0:
        return table
    if not 1 <= k <= n - 1:  # the kernel's buffer holds k ids out of n - 1 candidates
        raise ValueError(f"k must be an int in [1, {n - 1}] (codebook has {n} codes), got {k}")
    with c.on_device(emb):
        if normalize:
            normed = torch.empty_like(emb)
            block_r = min(c.next_pow2(n), 256)
            _normalize_kernel[(triton.cdiv(n, block_r),)](emb, normed, n, dim, BLOCK_R=block_r,
                                                          **c.launch_options(block_r))
            emb = normed
        # Narrow tiles: sorting costs grow as log^2 of the tile width, so the smallest power of two >= k wins.
        block_k = max(c.next_pow2(k), 8)
        block_i = max(1, min(2048 // block_k, 128, c.next_pow2(n)))
        _neighbor_table_kernel[(triton.cdiv(n, block_i),)](emb, table, n, dim, k, BLOCK_I=block_i, BLOCK_K=block_k,
                                                           **c.launch_options(block_i * block_k))
        block_r = min(c.next_pow2(n), 64)
        mark_k = min(block_k, 64)
        _mark_non_finite_rows_kernel[(triton.cdiv(n, block_r),)](codebook.contiguous(), table, n, dim, k,
                                                                 BLOCK_R=block_r, BLOCK_K=mark_k,
                                                                 **c.launch_options(block_r * mark_k))
    return table
