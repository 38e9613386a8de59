"""Reference: recursive rejection over a draft tree, exact or LANTERN-relaxed (docs/ALGORITHMS.md §3.5)."""

from typing import Optional, Tuple

import torch

from ._sampling import inverse_cdf
from ._status import ROW_BAD_PROB, bad_prob, tree_status
from .lantern_relaxed_mass import relaxed_mass64


def _sample(weights: torch.Tensor, u: torch.Tensor) -> int:
    return int(inverse_cdf(weights[None], u.reshape(1))[0])


def verify_tree(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    tree_tokens: torch.Tensor,
    parents: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    *,
    num_nodes: Optional[torch.Tensor] = None,
    method: str = "exact",
    neighbors: Optional[torch.Tensor] = None,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk each tree from the root; see :func:`specdec_kernels.verify_tree` for the contract.

    State per level: ``r``, the current (normalised, float64) target distribution at node ``cur``.
    Children are tried in ascending id, a repeated sibling token is skipped. With ``q`` None the
    proposal is one-hot (q'(t) = 1); otherwise q' = q[b, cur] without the earlier-tried tokens,
    renormalised (zero if nothing is left). Tests in float64:
    exact ``u * q'(t) < r(t)``; lantern ``p~(t) > 0 and u * q'(t) <= p~(t)`` with p~ from r.
    On rejection r <- norm(max(0, r~ - q')) where r~ is r with the merged neighbours' mass moved
    onto t (r~ = r for exact) and q' is one-hot at t when q is None; a zero residual falls back to
    p[b, cur]. Accepting moves to the child with r = p[b, child]. The bonus token is sampled from
    p[b, cur] at a childless node, the recovered token from r after the last rejection.

    Bad rows (``reference/_status.py``): codes 1-5 before the walk; code 6 (``csrc/methods.h``, as the CPU kernel)
    when a row p[b, n] the walk loads (the root, each accepted node) holds a NaN, inf or negative value or has no
    mass, or a row q[b, cur] whose children are tested holds one (also: a tested entry, the final node's rows).
    They return ``accepted_nodes[b] = -1``, ``accept_len[b] = 0``, ``next_token[b] = -code``.
    """
    batch, m, vocab = p.shape
    if num_nodes is None:
        num_nodes = torch.full((batch,), m, dtype=torch.int64, device=p.device)
    status = tree_status(p, tree_tokens, parents, u_accept, u_sample, num_nodes,
                         neighbors if method == "lantern" else None).tolist()
    accepted_nodes = torch.full((batch, max(m - 1, 0)), -1, dtype=torch.int64)
    accept_len = torch.zeros(batch, dtype=torch.int64)
    next_token = torch.zeros(batch, dtype=torch.int64)
    par = parents.tolist()
    tokens = tree_tokens.tolist()
    p64 = p.to(torch.float64).cpu()
    q64 = None if q is None else q.to(torch.float64).cpu()
    u_acc = u_accept.to(torch.float64).cpu()
    bad64 = bad_prob(p64)
    bad_q64 = None if q64 is None else bad_prob(q64)
    for b in range(batch):
        if status[b] != 0:  # structural problem: not walked (ids, parents or the table may be out of range)
            next_token[b] = -status[b]
            continue
        n_b = int(num_nodes[b])
        cur = 0
        r = p64[b, 0].clone()
        bad_read = False  # code 6: a tested entry p(t) / q(t), or the row finally sampled from
        # code 6: every p row the walk loads (root, accepted nodes), every q row of a node whose children are tested
        bad_read |= bool(bad64[b, 0].any()) or not bool(p64[b, 0].sum() > 0)
        rejected_last = False
        while True:
            kids = [c for c in range(1, n_b) if par[b][c] == cur]
            if not kids:
                next_token[b] = _sample(p64[b, cur], u_sample[b])
                break
            tried = []
            accepted = False
            for c in kids:
                t = tokens[b][c]
                if t in tried:
                    continue
                if q64 is None:
                    q_prime = None
                    q_t = 1.0
                else:
                    q_prime = q64[b, cur].clone()
                    q_prime[tried] = 0.0
                    total = q_prime.sum()
                    q_prime = q_prime / total if total > 0 else torch.zeros_like(q_prime)
                    q_t = float(q_prime[t])
                tried.append(t)
                bad_read |= bool(bad64[b, cur, t]) or (bad_q64 is not None and bool(bad_q64[b, cur, t]))
                bad_read |= bad_q64 is not None and bool(bad_q64[b, cur].any())
                u = float(u_acc[b, c])
                if method == "lantern":
                    p_tilde, merged = relaxed_mass64(r[None], torch.tensor([t]), neighbors, delta, lam)
                    p_tilde, merged = float(p_tilde[0]), int(merged[0])
                    ok = p_tilde > 0 and u * q_t <= p_tilde
                else:
                    ok = u * q_t < float(r[t])
                if ok:
                    accepted_nodes[b, int(accept_len[b])] = c
                    accept_len[b] += 1
                    cur = c
                    r = p64[b, c].clone()
                    bad_read |= bool(bad64[b, c].any()) or not bool(p64[b, c].sum() > 0)
                    accepted = True
                    break
                relaxed = r.clone()
                if method == "lantern" and merged > 0:
                    moved = neighbors[t, :merged].long()
                    relaxed[t] += r[moved].sum()
                    relaxed[moved] = 0.0
                if q_prime is None:
                    relaxed[t] = 0.0
                    residual = relaxed
                else:
                    residual = (relaxed - q_prime).clamp_min(0.0)
                total = residual.sum()
                r = residual / total if total > 0 else p64[b, cur].clone()
            if not accepted:
                rejected_last = True
                next_token[b] = _sample(r, u_sample[b])
                break
        bad_read |= bool(bad64[b, cur].any()) or not bool(p64[b, cur].sum() > 0)
        bad_read |= rejected_last and bad_q64 is not None and bool(bad_q64[b, cur].any())
        if bad_read:
            accepted_nodes[b] = -1
            accept_len[b] = 0
            next_token[b] = -ROW_BAD_PROB
    device = p.device
    return accepted_nodes.to(device), accept_len.to(device), next_token.to(device)
