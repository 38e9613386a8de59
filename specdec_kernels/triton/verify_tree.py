"""Triton tree verification (recursive rejection over siblings, exact or LANTERN-relaxed).

Grid: one program per tree b, sequential over levels and siblings. Pointers (contiguous):
  p [B, M, V] (fp32/fp16/bf16), q [B, M, V] or a dummy (HAS_Q), tree_tokens / parents [B, M] int64,
  u_accept [B, M] f32, u_sample [B] f32, num_nodes [B] int64, neighbors [V, K] int32 (lantern),
  scratch [B, V] f64 (the current residual r, unnormalised), marker [B, V] int32 (tried tokens),
  accepted_nodes [B, M-1] int64, accept_len / next_token [B] int64 (written; accepted_nodes is -1 padded here).
State: r is p[b, cur] (from_p) or scratch[b] / r_div, so every read of r(j) is the reference's normalised
float64 value; marker[b, t] == cur + 1 marks t as tried at node cur (node ids grow along the walk, so stale marks
never match). The program zeroes its marker row first, scans node ids c = cur+1 .. num_nodes-1 for children of cur,
and each rejection rewrites the residual row in place (one pass; LANTERN then scatters its merged neighbours and
re-sums). Every write to scratch/marker sits between block barriers: the one before it lets all lanes finish
reading the old values (their decisions must agree), the one after it publishes the new ones.
Invariants: parents well formed below num_nodes[b] (ids topological); tokens and table ids in [0, V).
"""

import torch
import triton
import triton.language as tl

from . import _common as c


@triton.jit(do_not_specialize=["M", "K", "budget_bits"])
def _verify_tree_kernel(p_ptr, q_ptr, tok_ptr, par_ptr, u_accept_ptr, u_sample_ptr, num_nodes_ptr, nbr_ptr,
                        scratch_ptr, marker_ptr, accepted_ptr, accept_len_ptr, next_token_ptr, M, V, K, budget_bits,
                        METHOD: tl.constexpr, HAS_Q: tl.constexpr, USE_LAMBDA: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n_b = tl.load(num_nodes_ptr + b)
    budget = budget_bits.to(tl.int64).to(tl.float64, bitcast=True)
    s_row = scratch_ptr + b * V
    mk_row = marker_ptr + b * V
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        tl.store(mk_row + offs, tl.zeros([BLOCK_V], tl.int32), mask=offs < V)
    tl.debug_barrier()

    cur = tl.zeros((), tl.int64)
    node = tl.full((), 1, tl.int64)
    count = tl.zeros((), tl.int64)
    from_p = tl.full((), 1, tl.int32)
    r_div = tl.full((), 1.0, tl.float64)
    has_kids = tl.zeros((), tl.int32)
    while node < n_b:
        is_kid = tl.load(par_ptr + b * M + node) == cur
        t = tl.load(tok_ptr + b * M + node, mask=is_kid, other=0)
        tag = (cur + 1).to(tl.int32)
        fresh = is_kid & (tl.load(mk_row + t, mask=is_kid, other=0) != tag)
        has_kids = has_kids | is_kid.to(tl.int32)
        if fresh:
            p_cur = p_ptr + (b * M + cur) * V
            q_cur = q_ptr + (b * M + cur) * V
            if HAS_Q:  # q' = q[cur] without the earlier-tried tokens, renormalised (zero if nothing is left)
                z = tl.zeros((), tl.float64)
                for v0 in range(0, V, BLOCK_V):
                    offs = v0 + tl.arange(0, BLOCK_V)
                    m = offs < V
                    qj = tl.load(q_cur + offs, mask=m, other=0.0).to(tl.float32).to(tl.float64)
                    tried = tl.load(mk_row + offs, mask=m, other=0) == tag
                    z += tl.sum(tl.where(tried, 0.0, qj), 0)
                q_t = tl.load(q_cur + t).to(tl.float32).to(tl.float64)
                q_t = tl.where(z > 0.0, q_t / z, 0.0)
            else:
                z = tl.full((), 1.0, tl.float64)
                q_t = tl.full((), 1.0, tl.float64)
            tl.debug_barrier()  # every lane has read marker (the fresh test, z) before t is marked
            tl.store(mk_row + t, tag)
            tl.debug_barrier()
            u = tl.load(u_accept_ptr + b * M + node).to(tl.float64)
            r_t = c.gather_r(p_cur, s_row, r_div, from_p, t, True, True)
            if METHOD == 2:
                p_tilde, merged, c_star = c.relaxed_mass(p_cur, s_row, r_div, from_p, nbr_ptr + t * K, K, r_t, budget,
                                                         USE_LAMBDA, True, BLOCK_K)
                ok = (p_tilde > 0.0) & (u * q_t <= p_tilde)
            else:
                merged = tl.zeros((), tl.int32)
                c_star = tl.zeros((), tl.float64)
                ok = u * q_t < r_t
            if ok:  # descend: r = p[b, node]
                tl.store(accepted_ptr + b * (M - 1) + count, node)
                count += 1
                cur = node
                from_p = tl.full((), 1, tl.int32)
                r_div = tl.full((), 1.0, tl.float64)
                has_kids = tl.zeros((), tl.int32)
            else:  # r <- norm(max(0, r~ - q')), q' one-hot at t without q
                tl.debug_barrier()  # every lane has read r (r_t, the LANTERN prefix) before it is overwritten
                total = tl.zeros((), tl.float64)
                for v0 in range(0, V, BLOCK_V):
                    offs = v0 + tl.arange(0, BLOCK_V)
                    m = offs < V
                    rj = c.gather_r(p_cur, s_row, r_div, from_p, offs, m, True)
                    if HAS_Q:
                        qj = tl.load(q_cur + offs, mask=m, other=0.0).to(tl.float32).to(tl.float64)
                        tried = (tl.load(mk_row + offs, mask=m, other=0) == tag) & (offs != t)
                        # (a scalar float comparison is widened to int first: the interpreter cannot broadcast it)
                        qp = tl.where(tried | ((z > 0.0).to(tl.int32) == 0), 0.0, qj / z)
                        res = tl.maximum(rj - qp, 0.0)
                    else:
                        res = tl.where(offs == t, 0.0, rj)
                    res = tl.where(m, res, 0.0)
                    tl.store(s_row + offs, res, mask=m)
                    total += tl.sum(res, 0)
                tl.debug_barrier()
                if METHOD == 2:  # noqa: SIM102 (a compile-time branch around a run-time one)
                    if merged > 0:  # r~: the merged neighbours' mass moved onto t
                        nbr_row = nbr_ptr + t * K
                        for k0 in range(0, merged, BLOCK_K):
                            ks = k0 + tl.arange(0, BLOCK_K)
                            km = ks < merged
                            ids = tl.load(nbr_row + ks, mask=km, other=0).to(tl.int64)
                            tl.store(s_row + ids, tl.zeros([BLOCK_K], tl.float64), mask=km)
                        tl.debug_barrier()
                        if HAS_Q:
                            tl.store(s_row + t, tl.maximum((r_t + c_star) - q_t, 0.0))
                            tl.debug_barrier()
                        total = tl.zeros((), tl.float64)
                        for v0 in range(0, V, BLOCK_V):
                            offs = v0 + tl.arange(0, BLOCK_V)
                            total += tl.sum(tl.load(s_row + offs, mask=offs < V, other=0.0), 0)
                if total > 0.0:
                    from_p = tl.zeros((), tl.int32)
                    r_div = total
                else:  # a zero residual falls back to p[b, cur]
                    from_p = tl.full((), 1, tl.int32)
                    r_div = tl.full((), 1.0, tl.float64)
        node += 1

    # Bonus token from p[b, cur] at a childless node; recovered token from r after the last rejection.
    p_cur = p_ptr + (b * M + cur) * V
    mode = tl.where((has_kids != 0) & (from_p == 0), 2, 0)
    u_s = tl.load(u_sample_ptr + b).to(tl.float64)
    total, last = c.weights_total(p_cur, p_cur, s_row, r_div, 0, mode, V, False, True, BLOCK_V)
    token = c.weights_search(p_cur, p_cur, s_row, r_div, 0, mode, u_s * total, last, V, False, True, BLOCK_V)
    tl.store(next_token_ptr + b, token)
    tl.store(accept_len_ptr + b, count)
    for j0 in range(0, M - 1, BLOCK_M):
        js = j0 + tl.arange(0, BLOCK_M)
        tl.store(accepted_ptr + b * (M - 1) + js, tl.full([BLOCK_M], -1, tl.int64), mask=(js >= count) & (js < M - 1))


def verify_tree_triton(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method_code, neighbors, params):
    """Launcher with the ``verify_tree`` op schema (``params`` packed as in csrc/methods.h); returns
    ``(accepted_nodes [B, M-1] int64, accept_len [B] int64, next_token [B] int64)``."""
    delta = lam = None
    if int(method_code) == 2:
        use_lambda, budget = params
        lam, delta = (budget, None) if use_lambda else (None, budget)
    p = p.contiguous()
    batch, nodes, vocab = p.shape
    device = p.device
    accepted = torch.empty(batch, max(nodes - 1, 0), dtype=torch.int64, device=device)
    accept_len = torch.empty(batch, dtype=torch.int64, device=device)
    next_token = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return accepted, accept_len, next_token
    method = int(method_code)
    has_q = q is not None
    use_lambda = lam is not None
    if method == 2:
        nbr = neighbors.contiguous()
        k = nbr.shape[1]
        budget = c.f64_bits(lam if use_lambda else delta)
    else:
        nbr, k, budget = parents, 1, 0
    scratch = torch.empty(batch, vocab, dtype=torch.float64, device=device)
    marker = torch.empty(batch, vocab, dtype=torch.int32, device=device)
    block_v = c.vocab_block(vocab)
    _verify_tree_kernel[(batch,)](
        p, q.contiguous() if has_q else p, tree_tokens.contiguous(), parents.contiguous(), u_accept.contiguous(),
        u_sample.contiguous(), num_nodes.contiguous(), nbr, scratch, marker, c.nonempty(accepted), accept_len,
        next_token, nodes, vocab, k, budget, METHOD=method, HAS_Q=has_q, USE_LAMBDA=use_lambda, BLOCK_V=block_v,
        BLOCK_K=c.neighbor_block(k), BLOCK_M=min(c.next_pow2(nodes), 1024), **c.launch_options(block_v),
    )
    return accepted, accept_len, next_token
