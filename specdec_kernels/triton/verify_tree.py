"""Triton tree verification (recursive rejection over siblings, exact or LANTERN-relaxed), over a row source.

The one kernel ``_tree_kernel`` serves ``verify_tree`` (probability rows) and ``verify_tree_logits`` (raw logits,
each node's row processed when the walk stands on that node, ``_rows.py``). It branches on the rule's traits
(``NEEDS_NEIGHBORS``, ``RESIDUAL``; :func:`launch_tree` passes them) and picks only the acceptance test by code.

Grid: one program per tree b, sequential over levels and siblings. Pointers (contiguous):
  p [B, M, V] probabilities (fp32/fp16/bf16) or logits [B or 2B, M, V] (P_LOGITS; p_buf [B, V] f32 holds the
  processed row of the current node), q [B, M, V] or a dummy (HAS_Q), tree_tokens / parents [B, M] int64,
  u_accept [B, M] f32, u_sample [B] f32, num_nodes [B] int64, neighbors [V, K] int32 (NEEDS_NEIGHBORS),
  scratch [B, V] f64 (the current residual r, unnormalised), marker [B, V] int32 (tried tokens),
  accepted_nodes [B, M-1] int64, accept_len / next_token [B] int64 (written; accepted_nodes is -1 padded here).
State: r is p[b, cur] (from_p, read through p_cur) or scratch[b] / r_div, so every read of r(j) is the reference's
normalised float64 value; marker[b, t] == cur + 1 marks t as tried at node cur (node ids grow along the walk, so
stale marks never match). The program zeroes its marker row first, scans node ids c = cur+1 .. num_nodes-1 for
children of cur, and each rejection rewrites the residual row in place (one pass; a relaxed residual then scatters
its merged neighbours and re-sums). Every write to scratch/marker sits between block barriers: the one before it
lets all lanes finish reading the old values (their decisions must agree), the one after it publishes the new ones.
Row status codes (docs/ALGORITHMS.md §3.8): before the walk the program checks num_nodes (1), the valid nodes'
tokens (2), parents (3), the tokens' neighbour rows (4) and uniforms (5); a bad row is walked as a lone
root (in-range reads only) and written as accepted_nodes -1, accept_len 0, next_token -code. Code 6 (as the CPU
walk): a row p[b, n] loaded for the root or an accepted node n is NaN / inf / negative somewhere or has no mass (a
processed logits row that is not a distribution), or a row q[b, cur] whose children are tested holds a NaN / inf /
negative value (also: a tested entry, the final node's rows). Code 7: a rule code the table lacks. Every walk
advances a node id per step: at most M steps.
"""

import torch
import triton
import triton.language as tl

from .. import _methods
from . import _common as c
from . import _rows as rows


@triton.jit(do_not_specialize=["M", "K", "budget_bits", "p_uncond_rows", "top_k", "scale_bits", "temperature_bits",
                               "top_p_bits"])
def _tree_kernel(p_ptr, p_buf_ptr, q_ptr, tok_ptr, par_ptr, u_accept_ptr, u_sample_ptr, num_nodes_ptr, nbr_ptr,
                 scratch_ptr, marker_ptr, accepted_ptr, accept_len_ptr, next_token_ptr, M, V, K, budget_bits,
                 p_uncond_rows, top_k, scale_bits, temperature_bits, top_p_bits, METHOD: tl.constexpr,
                 KNOWN: tl.constexpr, READS_WHOLE_ROW: tl.constexpr, NEEDS_NEIGHBORS: tl.constexpr,
                 RESIDUAL: tl.constexpr, HAS_Q: tl.constexpr, P_LOGITS: tl.constexpr, P_CFG: tl.constexpr,
                 TOP_K: tl.constexpr, TOP_P: tl.constexpr, USE_LAMBDA: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    tl.static_assert(not READS_WHOLE_ROW, "no tree rule reads the whole row: the tree walk has no such test")
    b = tl.program_id(0).to(tl.int64)
    n_b = tl.load(num_nodes_ptr + b)
    budget = budget_bits.to(tl.int64).to(tl.float64, bitcast=True)

    # Row status codes 1-5 (first failure wins); a bad row is walked as a lone root.
    n_valid = tl.minimum(tl.maximum(n_b, 1), M)
    bad_ids = c.ids_out_of_range(tok_ptr + b * M, n_valid, V, BLOCK_M)
    bad_par = tl.load(par_ptr + b * M) != -1
    for j0 in range(0, n_valid, BLOCK_M):
        js = j0 + tl.arange(0, BLOCK_M)
        jm = (js < n_valid) & (js > 0)
        pj = tl.load(par_ptr + b * M + js, mask=jm, other=0)
        bad_par = bad_par | (tl.max((jm & ((pj < 0) | (pj >= js))).to(tl.int32), 0) != 0)
    status = tl.zeros((), tl.int32)
    if NEEDS_NEIGHBORS:
        bad_nbr = tl.zeros((), tl.int32)
        if bad_ids == 0:
            for j in range(n_valid):
                t_j = tl.load(tok_ptr + b * M + j)
                bad_nbr = tl.maximum(bad_nbr, c.neighbor_row_bad(nbr_ptr, t_j, K, V, BLOCK_K).to(tl.int32))
        status = tl.where(bad_nbr != 0, c.ROW_BAD_NEIGHBOR, status)
    bad_u = c.uniforms_out_of_range(u_accept_ptr + b * M, n_valid, BLOCK_M) | c.bad_uniform(tl.load(u_sample_ptr + b))
    status = tl.where(bad_u & (status == 0), c.ROW_BAD_UNIFORM, status)
    status = tl.where(bad_par, c.ROW_BAD_PARENTS, status)
    status = tl.where(bad_ids, c.ROW_BAD_ID, status)
    status = tl.where((n_b < 1) | (n_b > M), c.ROW_BAD_COUNT, status)
    if not KNOWN:
        status = tl.full((), c.ROW_BAD_METHOD, tl.int32)
    n_b = tl.where(status == 0, n_b, 1)
    s_row = scratch_ptr + b * V
    mk_row = marker_ptr + b * V
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        tl.store(mk_row + offs, tl.zeros([BLOCK_V], tl.int32), mask=offs < V)
    tl.debug_barrier()

    cur = tl.zeros((), tl.int64)
    # r starts as the root's row; a logits row is processed into p_buf[b] when the walk stands on its node.
    p_cur, bad_read = rows.load_row(p_ptr, b * M, p_uncond_rows, p_buf_ptr + b * V, True, V, top_k, scale_bits,
                                    temperature_bits, top_p_bits, P_LOGITS, P_CFG, TOP_K, TOP_P, BLOCK_V)
    bad_read = bad_read | c.row_bad_or_empty(p_cur, True, V, BLOCK_V)  # code 6: the root's row
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
            q_cur = q_ptr + (b * M + cur) * V
            bad_read = bad_read | c.bad_value(tl.load(p_cur + t).to(tl.float32))
            if HAS_Q:
                bad_read = bad_read | c.bad_value(tl.load(q_cur + t).to(tl.float32))
                bad_read = bad_read | c.row_has_bad(q_cur, True, V, BLOCK_V)  # code 6: the whole q row of cur
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
            if METHOD == c.LANTERN:  # the rule's acceptance test
                p_tilde, merged, c_star = c.relaxed_mass(p_cur, s_row, r_div, from_p, nbr_ptr + t * K, K, r_t, budget,
                                                         USE_LAMBDA, True, BLOCK_K)
                ok = (p_tilde > 0.0) & (u * q_t <= p_tilde)
            else:
                merged = tl.zeros((), tl.int32)
                c_star = tl.zeros((), tl.float64)
                if METHOD == c.EXACT:
                    ok = u * q_t < r_t
                else:  # unreachable: an unknown rule's rows are lone roots
                    ok = tl.zeros((), tl.int1)
            if ok:  # descend: r = p[b, node]
                tl.store(accepted_ptr + b * (M - 1) + count, node)
                count += 1
                cur = node
                p_cur, bad_node = rows.load_row(p_ptr, b * M + node, p_uncond_rows, p_buf_ptr + b * V, True, V,
                                                top_k, scale_bits, temperature_bits, top_p_bits, P_LOGITS, P_CFG,
                                                TOP_K, TOP_P, BLOCK_V)
                bad_read = bad_read | bad_node | c.row_bad_or_empty(p_cur, True, V, BLOCK_V)  # code 6: its row
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
                if RESIDUAL == c.RESIDUAL_OVER_RELAXED:  # noqa: SIM102 (compile-time around run-time)
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

    # Bonus token from p[b, cur] (p_cur) at a childless node; recovered token from r after the last rejection.
    mode = tl.where((has_kids != 0) & (from_p == 0), 2, 0)
    u_s = tl.load(u_sample_ptr + b).to(tl.float64)
    total, last = c.weights_total(p_cur, p_cur, s_row, r_div, 0, mode, V, False, True, BLOCK_V)
    token = c.weights_search(p_cur, p_cur, s_row, r_div, 0, mode, u_s * total, last, V, False, True, BLOCK_V)
    # Code 6 on the final row: p[b, cur] (and q[b, cur] after a rejection) and its mass.
    bad_read = bad_read | c.row_has_bad(p_cur, True, V, BLOCK_V)
    if HAS_Q:
        bad_read = bad_read | c.row_has_bad(q_ptr + (b * M + cur) * V, has_kids != 0, V, BLOCK_V)
    status = tl.where((status == 0) & (bad_read | (last < 0)), c.ROW_BAD_PROB, status)
    ok = status == 0
    tl.store(next_token_ptr + b, tl.where(ok, token, -status.to(tl.int64)))
    tl.store(accept_len_ptr + b, tl.where(ok, count, 0))
    kept = tl.where(ok, count, 0)
    for j0 in range(0, M - 1, BLOCK_M):
        js = j0 + tl.arange(0, BLOCK_M)
        tl.store(accepted_ptr + b * (M - 1) + js, tl.full([BLOCK_M], -1, tl.int64), mask=(js >= kept) & (js < M - 1))


def launch_tree(p: rows.Source, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method_code, neighbors,
                params, processing=None):
    """The tree walk over a row source, for both tree ops: ``p`` a :class:`_rows.Source` of ``[B(x2), M, V]``, ``q``
    a ``[B, M, V]`` probability tensor or None, ``processing`` a :class:`_rows.Processing` (logits source). An unknown
    ``method_code`` is launched as such: every row reports code 7. Returns ``(accepted_nodes [B, M-1] int64,
    accept_len [B] int64, next_token [B] int64)``."""
    method = _methods.BY_CODE.get(int(method_code))
    if method is not None and not method.tree:
        method = None
    values = _methods.unpack_params(method, params) if method is not None else {}
    batch, nodes = tree_tokens.shape
    vocab = p.tensor.shape[-1]
    device = p.tensor.device
    accepted = torch.empty(batch, max(nodes - 1, 0), dtype=torch.int64, device=device)
    accept_len = torch.empty(batch, dtype=torch.int64, device=device)
    next_token = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return accepted, accept_len, next_token
    if processing is None:
        processing = rows.Processing(None, 1.0, 0, 1.0, vocab)
    has_q = q is not None
    rule = c.rule_constexprs(method)
    use_lambda = values.get("lam") is not None
    if rule["NEEDS_NEIGHBORS"]:
        nbr = neighbors.contiguous()
        k = nbr.shape[1]
        budget = c.f64_bits(values["lam"] if use_lambda else values["delta"])
    else:
        nbr, k, budget = parents, 1, 0
    scratch = torch.empty(batch, vocab, dtype=torch.float64, device=device)
    marker = torch.empty(batch, vocab, dtype=torch.int32, device=device)
    p_buf = torch.empty(batch, vocab, dtype=torch.float32, device=device) if p.logits else scratch
    block_v = c.vocab_block(vocab)
    with c.on_device(p.tensor):
        _tree_kernel[(batch,)](
            p.tensor, p_buf, q.contiguous() if has_q else p.tensor, tree_tokens.contiguous(), parents.contiguous(),
            u_accept.contiguous(), u_sample.contiguous(), num_nodes.contiguous(), nbr, scratch, marker,
            c.nonempty(accepted), accept_len, next_token, nodes, vocab, k, budget, p.uncond_rows, *processing.args(),
            **rule, HAS_Q=has_q, P_LOGITS=p.logits, P_CFG=p.cfg, TOP_K=processing.use_top_k,
            TOP_P=processing.use_top_p, USE_LAMBDA=use_lambda, BLOCK_V=block_v, BLOCK_K=c.neighbor_block(k),
            BLOCK_M=min(c.next_pow2(nodes), 1024), **c.launch_options(block_v),
        )
    return accepted, accept_len, next_token


def check_tree_method(op: str, method_code) -> None:
    """The launchers' refusal of a code that is not a tree rule (as the C++ ops and the fakes refuse it)."""
    method = _methods.BY_CODE.get(int(method_code))
    if method is None or not method.tree:
        raise ValueError(f"{op}: unknown method code {method_code!r}")


def verify_tree_triton(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method_code, neighbors, params):
    """Launcher with the ``verify_tree`` op schema (packed ``params``, ``specdec_kernels/_methods.py``); returns
    ``(accepted_nodes [B, M-1] int64, accept_len [B] int64, next_token [B] int64)``."""
    check_tree_method("verify_tree", method_code)
    return launch_tree(rows.Source(p), q, tree_tokens, parents, u_accept, u_sample, num_nodes, method_code, neighbors,
                       params)
