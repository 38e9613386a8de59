"""Triton chain verification: one walk for every chain rule, over a row source (probabilities or raw logits), with
the Jacobi refresh as an optional last phase. One fused launch per call.

The one kernel ``_chain_kernel`` serves ``verify_chain`` (probability rows), ``verify_chain_logits`` (logits rows
processed where the walk reads them, ``_rows.py``) and ``jacobi_step`` (logits, then the refresh of
``jacobi_step.py``). It branches on the rule's traits (``_methods.Method``: ``READS_WHOLE_ROW``,
``NEEDS_NEIGHBORS``, ``RESIDUAL``), passed as compile-time arguments by :func:`launch_chain`; only the acceptance
test itself is chosen by the rule's code.

Grid: one program per batch row b. Pointers (all contiguous):
  p [B, L+1, V] probabilities (fp32/fp16/bf16) or logits [B or 2B, L+1, V] (P_LOGITS; p_buf [B, V] f32 holds the
  processed row), q [B, L, V] probabilities or logits [B or 2B, L, V] (Q_LOGITS; q_buf) or a dummy (HAS_Q),
  draft [B, L] int64, u_accept [B, L] f32, u_sample [B] f32, num_drafts [B] int64, neighbors [V, K] int32
  (NEEDS_NEIGHBORS), embeddings [V, D_EMB] f32 (HAS_EMB), scratch [B, V] f64 (the relaxed residual),
  accept_len / next_token [B] int64 (written); with REFRESH (the Jacobi step, logits only) also u_draft / u_keep /
  u_init [B, L] f32, update [B] int8, and the written new_window [B, L] int64, new_q [B, L, V] f32, first_init [B].
Phase 1 tests drafts 0, 1, ... of row b until the first failure (a while loop: nothing past it is read, and no
logits row past it is processed); phase 2 is the loop's exit (a = accept_len); phase 3 samples the recovered token
from the residual at a, or the bonus from p[b, a], by two passes over that one row (float64 total, then inverse-CDF
search). No [B, L, V] temporary exists; a LANTERN rejection that merged neighbours writes its residual row to
scratch[b] once.
Row status codes (docs/ALGORITHMS.md §3.8): before the walk the program checks its row's num_drafts (1), used draft
ids (2), the used drafts' neighbour rows (4) and uniforms (5); a bad row is walked with no drafts (only in-range
reads) and written as accept_len 0, next_token -code. Code 6 comes from the values read: the tested p(x), q(x) (a
rule that reads the whole row: that row), the sampled row p[b, a] (with q[b, a] for a residual over q), which must
also have mass, and any processed logits row that is not a distribution. Code 7: a rule code the table lacks. No
input makes the kernel read or write out of bounds.
"""

import torch
import triton
import triton.language as tl

from .. import _methods
from . import _common as c
from . import _rows as rows
from .jacobi_step import refresh_window

_DO_NOT_SPECIALIZE = ["L", "K", "D_EMB", "budget_bits", "h_lo", "h_hi", "epsilon_bits", "alpha_bits", "p_uncond_rows",
                      "q_uncond_rows", "top_k", "scale_bits", "temperature_bits", "top_p_bits"]


@triton.jit(do_not_specialize=_DO_NOT_SPECIALIZE)
def _chain_kernel(p_ptr, p_buf_ptr, q_ptr, q_buf_ptr, draft_ptr, u_accept_ptr, u_sample_ptr, num_drafts_ptr, nbr_ptr,
                  emb_ptr, scratch_ptr, accept_len_ptr, next_token_ptr, u_draft_ptr, u_keep_ptr, u_init_ptr,
                  update_ptr, new_window_ptr, new_q_ptr, first_init_ptr, L, V, K, D_EMB, budget_bits, h_lo, h_hi,
                  p_thr, d_thr, epsilon_bits, alpha_bits, p_uncond_rows, q_uncond_rows, top_k, scale_bits,
                  temperature_bits, top_p_bits, METHOD: tl.constexpr, KNOWN: tl.constexpr,
                  READS_WHOLE_ROW: tl.constexpr, NEEDS_NEIGHBORS: tl.constexpr, RESIDUAL: tl.constexpr,
                  HAS_Q: tl.constexpr, P_LOGITS: tl.constexpr, Q_LOGITS: tl.constexpr, P_CFG: tl.constexpr,
                  Q_CFG: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, USE_LAMBDA: tl.constexpr,
                  HAS_EMB: tl.constexpr, REFRESH: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_INIT: tl.constexpr,
                  BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    tl.static_assert(P_LOGITS or not REFRESH, "the Jacobi refresh draws from processed logits rows")
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(num_drafts_ptr + b)
    budget = budget_bits.to(tl.int64).to(tl.float64, bitcast=True)
    s_row = scratch_ptr + b * V
    p_buf = p_buf_ptr + b * V
    q_buf = q_buf_ptr + b * V
    HAS_S: tl.constexpr = RESIDUAL == c.RESIDUAL_OVER_RELAXED

    # Row status codes 1, 2, 4, 5 (first failure wins), 7 for an unknown rule; a bad row is walked with no drafts.
    status = tl.zeros((), tl.int32)
    n_used = tl.minimum(tl.maximum(n, 0), L)
    bad_ids = c.ids_out_of_range(draft_ptr + b * L, n_used, V, BLOCK_L)
    if NEEDS_NEIGHBORS:
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
    if not KNOWN:
        status = tl.full((), c.ROW_BAD_METHOD, tl.int32)
    n = tl.where(status == 0, n, 0)

    # Phases 1-2: accept drafts while their test passes; each tested row is loaded (processed) once.
    a = tl.zeros((), tl.int64)
    merged = tl.zeros((), tl.int32)
    c_star = tl.zeros((), tl.float64)
    bad_read = tl.zeros((), tl.int1)  # code 6 on a tested entry or a loaded row
    go = a < n
    while go:
        p_row, bad_p = rows.load_row(p_ptr, b * (L + 1) + a, p_uncond_rows, p_buf, True, V, top_k, scale_bits,
                                     temperature_bits, top_p_bits, P_LOGITS, P_CFG, TOP_K, TOP_P, BLOCK_V)
        q_row, bad_q = rows.load_row(q_ptr, b * L + a, q_uncond_rows, q_buf, HAS_Q, V, top_k, scale_bits,
                                     temperature_bits, top_p_bits, Q_LOGITS, Q_CFG, TOP_K, TOP_P, BLOCK_V)
        bad_read = bad_read | bad_p | bad_q
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
        if READS_WHOLE_ROW:  # GSD's ranking, typical's entropy: the whole row is read
            bad_read = bad_read | c.row_has_bad(p_row, True, V, BLOCK_V)
        # The rule's acceptance test (the only place the walk looks at the rule's code).
        if METHOD == c.EXACT:
            passed = u * qx < px
        elif METHOD == c.GSD:
            group_p, group_q, group_bad = c.gsd_group_mass_checked(p_row, q_row, x, V, emb_ptr, D_EMB, h_lo, h_hi,
                                                                   p_thr, d_thr, HAS_Q, HAS_EMB, BLOCK_V)
            bad_read = bad_read | group_bad  # code 6: q of a member or an embedding row it compared
            passed = u * group_q < group_p
        elif METHOD == c.TYPICAL:
            entropy = tl.zeros((), tl.float64)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                pj = tl.load(p_row + offs, mask=offs < V, other=0.0).to(tl.float32).to(tl.float64)
                positive = pj > 0.0
                entropy += tl.sum(tl.where(positive, -pj * tl.log(tl.where(positive, pj, 1.0)), 0.0))
            epsilon = epsilon_bits.to(tl.int64).to(tl.float64, bitcast=True)
            alpha = alpha_bits.to(tl.int64).to(tl.float64, bitcast=True)
            passed = (px > epsilon) | (px > alpha * tl.exp(-entropy))
        elif METHOD == c.LANTERN:
            p_tilde, merged, c_star = c.relaxed_mass(p_row, s_row, 1.0, 1, nbr_ptr + x * K, K, px, budget,
                                                     USE_LAMBDA, False, BLOCK_K)
            passed = (p_tilde > 0.0) & (u * qx <= p_tilde)
        else:  # unreachable: an unknown rule's rows have no drafts
            passed = tl.zeros((), tl.int1)
        a += passed.to(tl.int64)
        go = passed & (a < n)

    # Phase 3: recovered token from the residual at a (rejected; rows a were loaded by the failed test), or bonus
    # token from p[b, n] (loaded here).
    rejected = a < n
    p_row, bad_p = rows.load_row(p_ptr, b * (L + 1) + a, p_uncond_rows, p_buf, a == n, V, top_k, scale_bits,
                                 temperature_bits, top_p_bits, P_LOGITS, P_CFG, TOP_K, TOP_P, BLOCK_V)
    q_row, bad_q = rows.load_row(q_ptr, b * L + a, q_uncond_rows, q_buf, False, V, top_k, scale_bits,
                                 temperature_bits, top_p_bits, Q_LOGITS, Q_CFG, TOP_K, TOP_P, BLOCK_V)
    bad_read = bad_read | bad_p
    x = tl.load(draft_ptr + b * L + a, mask=rejected, other=0)
    if RESIDUAL == c.RESIDUAL_TARGET:  # the rule samples p[b, a] itself
        mode = tl.zeros((), tl.int32)
    else:
        mode = rejected.to(tl.int32)  # 1: residual max(0, p - q); 0: p
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
    # Code 6 on the sampled row: p[b, a], and q[b, a] when a residual over q is sampled.
    bad_read = bad_read | c.row_has_bad(p_row, True, V, BLOCK_V)
    if HAS_Q:
        if RESIDUAL != c.RESIDUAL_TARGET:
            bad_read = bad_read | c.row_has_bad(q_row, rejected, V, BLOCK_V)
    u_s = tl.load(u_sample_ptr + b).to(tl.float64)
    total, last = c.weights_total(p_row, q_row, s_row, 1.0, x, mode, V, HAS_Q, HAS_S, BLOCK_V)
    if last < 0:  # the residual sums to zero: fall back to p at a
        mode = tl.zeros((), tl.int32)
        total, last = c.weights_total(p_row, q_row, s_row, 1.0, x, mode, V, HAS_Q, HAS_S, BLOCK_V)
    token = c.weights_search(p_row, q_row, s_row, 1.0, x, mode, u_s * total, last, V, HAS_Q, HAS_S, BLOCK_V)
    status = tl.where((status == 0) & (bad_read | (last < 0)), c.ROW_BAD_PROB, status)

    if REFRESH:  # Jacobi step: the new window from the same processed rows (jacobi_step.py)
        status = refresh_window(p_ptr, q_ptr, draft_ptr, u_draft_ptr, u_keep_ptr, u_init_ptr, update_ptr,
                                new_window_ptr, new_q_ptr, first_init_ptr, b, a, n, status, L, V, p_uncond_rows, top_k,
                                scale_bits, temperature_bits, top_p_bits, HAS_Q, P_CFG, TOP_K, TOP_P, HAS_KEEP,
                                HAS_INIT, BLOCK_V)
    tl.store(accept_len_ptr + b, tl.where(status == 0, a, 0))
    tl.store(next_token_ptr + b, tl.where(status == 0, token, -status.to(tl.int64)))


def _dummy(device, dtype=torch.float32):
    return torch.empty(1, dtype=dtype, device=device)


def launch_chain(p: rows.Source, q, draft, u_accept, u_sample, num_drafts, method_code, neighbors, embeddings,
                 params, processing=None, refresh=None):
    """The chain walk over row sources, for every chain op: ``p`` a :class:`_rows.Source` of ``[B(x2), L+1, V]``,
    ``q`` one of ``[B(x2), L, V]`` or None (one-hot drafts), ``processing`` a :class:`_rows.Processing` (logits
    sources), ``refresh`` the Jacobi outputs and uniforms (``jacobi_step.py``) or None. An unknown ``method_code``
    is launched as such: every row reports code 7. Returns ``(accept_len [B] int64, next_token [B] int64)``."""
    method = _methods.BY_CODE.get(int(method_code))
    if method is not None and not method.chain:
        method = None
    values = _methods.unpack_params(method, params) if method is not None else {}
    batch, drafts = draft.shape
    vocab = p.tensor.shape[-1]
    device = p.tensor.device
    accept_len = torch.empty(batch, dtype=torch.int64, device=device)
    next_token = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return accept_len, next_token
    if processing is None:
        processing = rows.Processing(None, 1.0, 0, 1.0, vocab)
    has_q = q is not None
    p_buf = torch.empty(batch, vocab, dtype=torch.float32, device=device) if p.logits else _dummy(device)
    q_buf = torch.empty(batch, vocab, dtype=torch.float32, device=device) if has_q and q.logits else _dummy(device)
    q_arg = c.nonempty(q.tensor) if has_q else p.tensor
    draft = c.nonempty(draft.contiguous())
    u_accept = c.nonempty(u_accept.contiguous())
    rule = c.rule_constexprs(method)
    use_lambda = values.get("lam") is not None
    if rule["NEEDS_NEIGHBORS"]:
        nbr = neighbors.contiguous()
        k = nbr.shape[1]
        budget = c.f64_bits(values["lam"] if use_lambda else values["delta"])
    else:
        nbr, k, budget = draft, 1, 0
    if rule["RESIDUAL"] == _methods.RESIDUALS.index("over_relaxed"):
        scratch = torch.empty(batch, vocab, dtype=torch.float64, device=device)
    else:
        scratch = _dummy(device, torch.float64)
    h_lo, h_hi = c.gsd_window(*values.get("rank_window", (0, 0)), vocab)
    has_emb = method is not None and "embeddings" in method.optional and embeddings is not None
    emb = embeddings.contiguous() if has_emb else p.tensor
    emb_dim = emb.shape[1] if has_emb else 1
    if refresh is None:
        refresh_args = [accept_len] * 7  # never dereferenced without REFRESH
        refresh_flags = {"REFRESH": False, "HAS_KEEP": False, "HAS_INIT": False}
    else:
        refresh_args = refresh.pointers()
        refresh_flags = refresh.flags()
    block_v = c.vocab_block(vocab)
    with c.on_device(p.tensor):
        _chain_kernel[(batch,)](
            p.tensor, p_buf, q_arg, q_buf, draft, u_accept, u_sample.contiguous(), num_drafts.contiguous(), nbr, emb,
            scratch, accept_len, next_token, *refresh_args, drafts, vocab, k, emb_dim, budget, h_lo, h_hi,
            c.to_f32(values.get("p_thr", 0.0)), c.to_f32(values.get("d_thr", 0.0)),
            c.f64_bits(values.get("epsilon", 0.0)), c.f64_bits(values.get("alpha", 0.0)), p.uncond_rows,
            q.uncond_rows if has_q else 0, *processing.args(), **rule, HAS_Q=has_q, P_LOGITS=p.logits,
            Q_LOGITS=has_q and q.logits, P_CFG=p.cfg, Q_CFG=has_q and q.cfg, TOP_K=processing.use_top_k,
            TOP_P=processing.use_top_p, USE_LAMBDA=use_lambda, HAS_EMB=has_emb, **refresh_flags, BLOCK_V=block_v,
            BLOCK_K=c.neighbor_block(k), BLOCK_L=min(c.next_pow2(drafts), 1024), **c.launch_options(block_v),
        )
    return accept_len, next_token


def check_chain_method(op: str, method_code) -> None:
    """The launchers' refusal of a code that is not a chain rule (as the C++ ops and the fakes refuse it)."""
    method = _methods.BY_CODE.get(int(method_code))
    if method is None or not method.chain:
        raise ValueError(f"{op}: unknown method code {method_code!r}")


def verify_chain_triton(p, q, draft, u_accept, u_sample, num_drafts, method_code, neighbors, embeddings, params):
    """Launcher with the ``verify_chain`` op schema (packed ``params``, ``specdec_kernels/_methods.py``); returns
    ``(accept_len [B] int64, next_token [B] int64)``."""
    check_chain_method("verify_chain", method_code)
    return launch_chain(rows.Source(p), None if q is None else rows.Source(q), draft, u_accept, u_sample, num_drafts,
                        method_code, neighbors, embeddings, params)
