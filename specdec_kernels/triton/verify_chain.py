"""Triton chain verification (exact / GSD / LANTERN / typical): one fused launch per call.

Grid: one program per batch row b. Pointers (all contiguous):
  p [B, L+1, V] (fp32/fp16/bf16), q [B, L, V] or a dummy (HAS_Q), draft [B, L] int64, u_accept [B, L] f32,
  u_sample [B] f32, num_drafts [B] int64, neighbors [V, K] int32 (lantern), embeddings [V, D_EMB] f32 (gsd,
  HAS_EMB), scratch [B, V] f64 (lantern only), accept_len / next_token [B] int64 (written).
Phase 1 tests drafts 0, 1, ... of row b until the first failure (a while loop: nothing past it is read);
phase 2 is the loop's exit (a = accept_len); phase 3 samples the recovered token from the residual at a, or the
bonus from p[b, a], by two passes over that one row (float64 total, then inverse-CDF search). No [B, L, V]
temporary exists; a LANTERN rejection that merged neighbours writes its residual row to scratch[b] once.
Row status codes (docs/ALGORITHMS.md §3.8): before the walk the program checks its row's num_drafts (1), used draft
ids (2), the used drafts' neighbour rows (4, lantern) and uniforms (5); a bad row is walked with no drafts (only
in-range reads) and written as accept_len 0, next_token -code. Code 6 comes from the values read: the tested
p(x), q(x) (GSD: the whole ranked row), and the sampled row p[b, a] (with q[b, a] for a residual), which must
also have mass. No input makes the kernel read or write out of bounds.
"""

import torch
import triton
import triton.language as tl

from .. import _methods
from . import _common as c


@triton.jit(do_not_specialize=["L", "K", "D_EMB", "budget_bits", "h_lo", "h_hi", "epsilon_bits",
                               "alpha_bits"])
def _verify_chain_kernel(p_ptr, q_ptr, draft_ptr, u_accept_ptr, u_sample_ptr, num_drafts_ptr, nbr_ptr, emb_ptr,
                         scratch_ptr, accept_len_ptr, next_token_ptr, L, V, K, D_EMB, budget_bits, h_lo, h_hi,
                         p_thr, d_thr, epsilon_bits, alpha_bits, METHOD: tl.constexpr, HAS_Q: tl.constexpr,
                         USE_LAMBDA: tl.constexpr, HAS_EMB: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_L: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(num_drafts_ptr + b)
    budget = budget_bits.to(tl.int64).to(tl.float64, bitcast=True)
    s_row = scratch_ptr + b * V
    HAS_S: tl.constexpr = METHOD == c.LANTERN

    # Row status codes 1, 2, 4, 5 (first failure wins); a bad row is walked with no drafts.
    status = tl.zeros((), tl.int32)
    n_used = tl.minimum(tl.maximum(n, 0), L)
    bad_ids = c.ids_out_of_range(draft_ptr + b * L, n_used, V, BLOCK_L)
    if METHOD == c.LANTERN:
        bad_nbr = tl.zeros((), tl.int32)
        if bad_ids == 0:
            for i in range(n_used):
                x_i = tl.load(draft_ptr + b * L + i)
                bad_nbr = tl.maximum(bad_nbr, c.neighbor_row_bad(nbr_ptr, x_i, K, V, BLOCK_K).to(tl.int32))
        status = tl.where(bad_nbr != 0, c.ROW_BAD_NEIGHBOR, status)
    bad_u = c.uniforms_out_of_range(u_accept_ptr + b * L, n_used, BLOCK_L) | c.bad_uniform(tl.load(u_sample_ptr + b))
    status = tl.where(bad_u & (status == 0), c.ROW_BAD_UNIFORM, status)
    status = tl.where(bad_ids, c.ROW_BAD_ID, status)
    status = tl.where((n < 0) | (n > L), c.ROW_BAD_COUNT, status)
    n = tl.where(status == 0, n, 0)

    # Phases 1-2: accept drafts while their test passes.
    a = tl.zeros((), tl.int64)
    merged = tl.zeros((), tl.int32)
    c_star = tl.zeros((), tl.float64)
    bad_read = tl.zeros((), tl.int1)  # code 6 on a tested entry
    go = a < n
    while go:
        p_row = p_ptr + (b * (L + 1) + a) * V
        q_row = q_ptr + (b * L + a) * V
        x = tl.load(draft_ptr + b * L + a)
        u = tl.load(u_accept_ptr + b * L + a).to(tl.float64)
        px32 = tl.load(p_row + x).to(tl.float32)
        px = px32.to(tl.float64)
        bad_read = bad_read | c.bad_value(px32)
        if HAS_Q:
            qx32 = tl.load(q_row + x).to(tl.float32)
            qx = qx32.to(tl.float64)
            bad_read = bad_read | c.bad_value(qx32)
        else:
            qx = tl.full((), 1.0, tl.float64)
        if METHOD == c.EXACT:
            passed = u * qx < px
        elif METHOD == c.GSD:
            bad_read = bad_read | c.row_has_bad(p_row, True, V, BLOCK_V)  # GSD ranks (reads) the whole row
            group_p, group_q = c.gsd_group_mass(p_row, q_row, x, V, emb_ptr, D_EMB, h_lo, h_hi, p_thr, d_thr, HAS_Q,
                                                HAS_EMB, BLOCK_V)
            passed = u * group_q < group_p
        elif METHOD == c.TYPICAL:
            bad_read = bad_read | c.row_has_bad(p_row, True, V, BLOCK_V)  # the entropy reads the whole row
            entropy = tl.zeros((), tl.float64)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                pj = tl.load(p_row + offs, mask=offs < V, other=0.0).to(tl.float32).to(tl.float64)
                positive = pj > 0.0
                entropy += tl.sum(tl.where(positive, -pj * tl.log(tl.where(positive, pj, 1.0)), 0.0))
            epsilon = epsilon_bits.to(tl.int64).to(tl.float64, bitcast=True)
            alpha = alpha_bits.to(tl.int64).to(tl.float64, bitcast=True)
            passed = (px > epsilon) | (px > alpha * tl.exp(-entropy))
        else:
            p_tilde, merged, c_star = c.relaxed_mass(p_row, s_row, 1.0, 1, nbr_ptr + x * K, K, px, budget,
                                                     USE_LAMBDA, False, BLOCK_K)
            passed = (p_tilde > 0.0) & (u * qx <= p_tilde)
        a += passed.to(tl.int64)
        go = passed & (a < n)

    # Phase 3: recovered token from the residual at a (rejected), or bonus token from p[b, n].
    rejected = a < n
    p_row = p_ptr + (b * (L + 1) + a) * V
    q_row = q_ptr + (b * L + a) * V
    x = tl.load(draft_ptr + b * L + a, mask=rejected, other=0)
    mode = rejected.to(tl.int32)  # 1: residual max(0, p~_x - q); 0: p
    if METHOD == c.TYPICAL:  # typical samples p[b, a] itself
        mode = tl.zeros((), tl.int32)
    if HAS_S:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if rejected & (merged > 0):
            # LANTERN moved the mass of x's first `merged` neighbours onto x: write that residual row once.
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                mask = offs < V
                w = c.row_weights(p_row, q_row, s_row, 1.0, offs, mask, x, 1, HAS_Q, False)
                tl.store(s_row + offs, w, mask=mask)
            tl.debug_barrier()
            nbr_row = nbr_ptr + x * K
            for k0 in range(0, merged, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                km = ks < merged
                ids = tl.load(nbr_row + ks, mask=km, other=0).to(tl.int64)
                tl.store(s_row + ids, tl.zeros([BLOCK_K], tl.float64), mask=km)
            tl.debug_barrier()
            p_x = tl.load(p_row + x).to(tl.float32).to(tl.float64)
            if HAS_Q:
                q_x = tl.load(q_row + x).to(tl.float32).to(tl.float64)
            else:
                q_x = tl.full((), 1.0, tl.float64)
            tl.store(s_row + x, tl.maximum((p_x + c_star) - q_x, 0.0))
            tl.debug_barrier()
            mode = tl.full((), 2, tl.int32)
    # Code 6 on the sampled row: p[b, a], and q[b, a] when a residual is sampled.
    bad_read = bad_read | c.row_has_bad(p_row, True, V, BLOCK_V)
    if HAS_Q:
        if METHOD != c.TYPICAL:
            bad_read = bad_read | c.row_has_bad(q_row, rejected, V, BLOCK_V)
    u_s = tl.load(u_sample_ptr + b).to(tl.float64)
    total, last = c.weights_total(p_row, q_row, s_row, 1.0, x, mode, V, HAS_Q, HAS_S, BLOCK_V)
    if last < 0:  # the residual sums to zero: fall back to p at a
        mode = tl.zeros((), tl.int32)
        total, last = c.weights_total(p_row, q_row, s_row, 1.0, x, mode, V, HAS_Q, HAS_S, BLOCK_V)
    token = c.weights_search(p_row, q_row, s_row, 1.0, x, mode, u_s * total, last, V, HAS_Q, HAS_S, BLOCK_V)
    status = tl.where((status == 0) & (bad_read | (last < 0)), c.ROW_BAD_PROB, status)
    tl.store(accept_len_ptr + b, tl.where(status == 0, a, 0))
    tl.store(next_token_ptr + b, tl.where(status == 0, token, -status.to(tl.int64)))


def verify_chain_triton(p, q, draft, u_accept, u_sample, num_drafts, method_code, neighbors, embeddings, params):
    """Launcher with the ``verify_chain`` op schema (packed ``params``, ``specdec_kernels/_methods.py``); returns
    ``(accept_len [B] int64, next_token [B] int64)``."""
    method = _methods.BY_CODE.get(int(method_code))
    if method is None or not method.chain:
        raise ValueError(f"verify_chain: unknown method code {method_code!r}")
    values = _methods.unpack_params(method, params)
    p = p.contiguous()
    batch, slots, vocab = p.shape
    drafts = slots - 1
    accept_len = torch.empty(batch, dtype=torch.int64, device=p.device)
    next_token = torch.empty(batch, dtype=torch.int64, device=p.device)
    if batch == 0:
        return accept_len, next_token
    has_q = q is not None
    q_arg = c.nonempty(q.contiguous()) if has_q else p
    draft = c.nonempty(draft.contiguous())
    u_accept = c.nonempty(u_accept.contiguous())
    use_lambda = values.get("lam") is not None
    if method is _methods.LANTERN:
        nbr = neighbors.contiguous()
        k = nbr.shape[1]
        budget = c.f64_bits(values["lam"] if use_lambda else values["delta"])
        scratch = torch.empty(batch, vocab, dtype=torch.float64, device=p.device)
    else:
        nbr, k, budget = draft, 1, 0
        scratch = torch.empty(1, dtype=torch.float64, device=p.device)
    h_lo, h_hi = c.gsd_window(*values.get("rank_window", (0, 0)), vocab)
    has_emb = method is _methods.GSD and embeddings is not None
    emb = embeddings.contiguous() if has_emb else p
    emb_dim = emb.shape[1] if has_emb else 1
    block_v = c.vocab_block(vocab)
    with c.on_device(p):
        _verify_chain_kernel[(batch,)](
            p, q_arg, draft, u_accept, u_sample.contiguous(), num_drafts.contiguous(), nbr, emb, scratch, accept_len,
            next_token, drafts, vocab, k, emb_dim, budget, h_lo, h_hi, c.to_f32(values.get("p_thr", 0.0)),
            c.to_f32(values.get("d_thr", 0.0)), c.f64_bits(values.get("epsilon", 0.0)),
            c.f64_bits(values.get("alpha", 0.0)), METHOD=method.code, HAS_Q=has_q, USE_LAMBDA=use_lambda,
            HAS_EMB=has_emb, BLOCK_V=block_v, BLOCK_K=c.neighbor_block(k), BLOCK_L=min(c.next_pow2(drafts), 1024),
            **c.launch_options(block_v),
        )
    return accept_len, next_token
