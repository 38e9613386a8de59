"""Bad values under the default check: every auxiliary op reports the values it reads as row codes, identically on
every backend (docs/ALGORITHMS.md §3.8), and ``cspd_verify`` takes the same decisions on every backend at large D.

Regression tests for issue 24: on the code before it, each of these returned a result computed from the bad values
(``validate=None`` did not raise, ``validate=False`` reported nothing), the backends disagreed on which tree rows are
bad, the Triton neighbour table ranked a sign-bit NaN distance first, and the CPU CSpD kernel's sequential float64
sums took different decisions from the reference at D = 2^20.
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _backends import ALL_BACKENDS, device_for, raises_bad_row

NAN, INF = math.nan, math.inf


def _on(backend, *tensors):
    device = device_for(backend)
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


def _cpu(out):
    return tuple(t.cpu() for t in out) if isinstance(out, tuple) else out.cpu()


# ------------------------------------------------------------------------------------------ neighbor_table


def _codebook():
    book = torch.randn(24, 4, generator=torch.Generator().manual_seed(3))
    book[5, 2] = NAN
    book[11, 0] = INF
    book[17, 3] = -INF
    return book


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_neighbor_table_reports_non_finite_codes(backend, normalize):
    """A code whose codebook row holds NaN / inf gets the table row -6 on every backend; the other rows are the
    reference's (distances to a bad code are NaN and rank last)."""
    book = _codebook()
    want = reference.neighbor_table(book, 5, normalize=normalize)
    got = _cpu(sk.neighbor_table(*_on(backend, book), 5, normalize=normalize, backend=backend, validate=False))
    bad = torch.tensor([5, 11, 17])
    assert (got[bad] == -6).all() and (want[bad] == -6).all()
    assert torch.equal(got, want)
    with raises_bad_row(match=r"neighbor_table: row 5: codebook holds NaN or inf .*status code 6"):
        _cpu(sk.neighbor_table(*_on(backend, book), 5, normalize=normalize, backend=backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_neighbor_table_ranks_sign_bit_nan_last(backend):
    """A NaN with the sign bit set (what inf - inf gives on x86) is still ranked after every real distance: the
    Triton kernel's int64 keys used to turn it into a negative key, listing the bad code as everyone's nearest."""
    book = torch.randn(12, 3, generator=torch.Generator().manual_seed(5))
    book[4] = -torch.tensor(NAN)  # -NaN: the sign bit set
    assert torch.signbit(book[4]).all()
    want = reference.neighbor_table(book, 3, normalize=False)
    got = _cpu(sk.neighbor_table(*_on(backend, book), 3, normalize=False, backend=backend, validate=False))
    assert torch.equal(got, want)
    assert not (got[torch.arange(12) != 4] == 4).any()  # k = 3 of 10 finite neighbours: code 4 never listed


# ------------------------------------------------------------------------------------------ lantern_relaxed_mass


def _lantern_case():
    vocab = 10
    p = torch.full((5, vocab), 0.1)
    table = torch.tensor([[(c + j) % vocab for j in range(1, 5)] for c in range(vocab)], dtype=torch.int32)
    x = torch.tensor([0, 1, 2, 3, 4])
    p[0, 0] = NAN  # p(x)
    p[1, 2] = -0.2  # n_1 of x = 1: read
    p[2, 4] = INF  # n_2 of x = 2: read (n_1 = 3 merges under delta = 0.15)
    p[3, 8] = NAN  # n_4 of x = 3: not read (the scan stops after n_2)
    p[4, 6] = NAN  # n_2 of x = 4: the entry that ends the scan, read
    return p, x, table


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_lantern_relaxed_mass_reports_the_values_it_reads(backend):
    p, x, table = _lantern_case()
    p_tilde, merged = _cpu(sk.lantern_relaxed_mass(*_on(backend, p, x, table), delta=0.15, backend=backend,
                                                   validate=False))
    assert merged.tolist() == [-6, -6, -6, 1, -6]
    assert torch.isnan(p_tilde[[0, 1, 2, 4]]).all() and p_tilde[3].item() == pytest.approx(0.2)
    want = reference.lantern_relaxed_mass(p, x, table, delta=0.15)
    assert torch.equal(merged, want[1]) and torch.allclose(p_tilde, want[0], equal_nan=True)
    with raises_bad_row(match=r"lantern_relaxed_mass: row 0: p holds a NaN, inf or negative"):
        sk.lantern_relaxed_mass(*_on(backend, p, x, table), delta=0.15, backend=backend)
    ok = p[3:4]
    sk.lantern_relaxed_mass(*_on(backend, ok, x[3:4], table), delta=0.15, backend=backend)  # an unread NaN is fine


# ------------------------------------------------------------------------------------------ gsd_group_mass


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gsd_group_mass_reports_the_values_it_reads(backend):
    vocab = 8
    p = torch.softmax(torch.randn(6, vocab, generator=torch.Generator().manual_seed(9)), -1)
    q = torch.softmax(torch.randn(6, vocab, generator=torch.Generator().manual_seed(10)), -1)
    emb = torch.nn.functional.normalize(torch.randn(vocab, 3, generator=torch.Generator().manual_seed(11)), dim=-1)
    x = torch.tensor([0, 1, 2, 3, 4, 99])
    order = torch.sort(p, dim=1, descending=True, stable=True).indices
    p[1, order[1, -1]] = NAN  # ranked, though far outside the window
    q[2, 2] = -0.5  # q(x): x is a member
    far = order[3, -1] if order[3, -1] != 3 else order[3, -2]
    q[3, far] = NAN  # q outside the window: never read
    kwargs = dict(rank_window=(1, 1), p_thr=1.0, d_thr=4.0)
    args = _on(backend, p, q, x)
    group_p, group_q = _cpu(sk.gsd_group_mass(*args, embeddings=_on(backend, emb)[0], **kwargs, backend=backend,
                                              validate=False))
    assert group_p[[1, 2, 5]].tolist() == [-6.0, -6.0, -2.0]
    assert torch.isnan(group_q[[1, 2, 5]]).all()
    assert (group_p[[0, 3, 4]] > 0).all() and torch.isfinite(group_q[[0, 3, 4]]).all()
    want = reference.gsd_group_mass(p, q, x, embeddings=emb, **kwargs)
    assert torch.allclose(group_p, want[0], equal_nan=True) and torch.allclose(group_q, want[1], equal_nan=True)
    with raises_bad_row(match=r"gsd_group_mass: row 1: p / q / embeddings holds"):
        sk.gsd_group_mass(*args, embeddings=_on(backend, emb)[0], **kwargs, backend=backend)
    # a NaN embedding row of a window member whose distance is computed (p_thr = 1: every member passes)
    emb_bad = emb.clone()
    rank4 = (order[4] == 4).nonzero().item()
    emb_bad[order[4, rank4 - 1] if rank4 > 0 else order[4, rank4 + 1]] = NAN
    one = _on(backend, p[4:5], q[4:5], x[4:5], emb_bad)
    group_p, group_q = _cpu(sk.gsd_group_mass(*one[:3], embeddings=one[3], **kwargs, backend=backend,
                                              validate=False))
    assert group_p.tolist() == [-6.0] and torch.isnan(group_q).all()
    no_filter = dict(kwargs, p_thr=0.0)  # no member passes the probability filter: no distance is computed
    assert (_cpu(sk.gsd_group_mass(*one[:3], embeddings=one[3], **no_filter, backend=backend))[0] > 0).all()
    with raises_bad_row(match=r"gsd_group_mass: row 1: x holds an id outside"):
        sk.gsd_group_mass(*_on(backend, p[[0, 5]], None, x[[0, 5]]), backend=backend)


# ------------------------------------------------------------------------------------------ cspd_verify


def _cspd_case(n=8, dim=5, tries=3, seed=4):
    g = torch.Generator().manual_seed(seed)
    mu_p = torch.randn(n, dim, generator=g)
    sigma_p = torch.rand(n, dim, generator=g) + 0.5
    mu_q = mu_p + 0.5 * torch.randn(n, dim, generator=g)
    sigma_q = sigma_p * 1.2
    x = mu_q + sigma_q * torch.randn(n, dim, generator=g)
    s_q, s_p = 0.1 * torch.randn(n, dim, generator=g), 0.1 * torch.randn(n, dim, generator=g)
    return [x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, torch.rand(n, generator=g) * 0.999,
            torch.rand(n, tries, dim, generator=g), torch.rand(n, tries, generator=g)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_cspd_verify_reports_bad_values(backend):
    args = _cspd_case()
    args[4][1, 2] = 0.0  # sigma_p = 0
    args[2][2, 0] = -1.0  # sigma_q < 0
    args[4][3, 1] = NAN  # sigma_p NaN
    args[5][4, 4] = NAN  # s_q NaN
    args[0][5, 3] = INF  # x inf
    args[7][6] = 0.0  # u_accept = 0: log u = -inf accepts (a valid edge)
    args[0][7] = args[3][7] + 6.0 * args[4][7]  # x far out in p's tail: rejected, then ...
    args[8][7, 0, 2] = -0.5  # ... u_prop of the first try, which it computes, is negative
    # the reference oracle, with its status output
    tokens, accepted, fallback, status = reference.cspd_verify(*args)
    assert status.tolist() == [0, -6, -6, -6, -6, -6, 0, -5]
    assert accepted[6] and not accepted[1:6].any() and not fallback[1:6].any() and torch.isnan(tokens[1:6]).all()
    got = _cpu(sk.cspd_verify(*_on(backend, *args), backend=backend, validate=False))
    assert torch.equal(got[1], accepted) and torch.equal(got[2], fallback)
    assert torch.allclose(got[0], tokens, rtol=1e-5, atol=1e-6, equal_nan=True)
    with raises_bad_row(match=r"cspd_verify: row 1: x / mu_q / sigma_q / mu_p / sigma_p / s_q / s_p"):
        sk.cspd_verify(*_on(backend, *args), backend=backend)
    only_uniform = [a[7:8] for a in args]
    with raises_bad_row(match=r"cspd_verify: row 0: u_accept / u_prop / u_ar holds a value outside"):
        sk.cspd_verify(*_on(backend, *only_uniform), backend=backend)


def _large_d_case(dim, n, seed=0):
    """Tokens whose log rho is a sum of D terms of size ~1 (sigma_q = 3 sigma_p) that log c's share cancels to
    log rho ~ -1: summed apart, log c and the rest are partial sums of size ~D, and a plain sequential float64
    sum drifts by ~sqrt(D) roundings of them. u_accept is the float32 nearest to rho itself, the hardest place to
    agree; the exact decision uses exactly rounded sums (math.fsum) of the per-dim terms every backend forms."""
    g = torch.Generator().manual_seed(seed)
    mu_p = torch.randn(n, dim, generator=g)
    sigma_p = torch.rand(n, dim, generator=g) + 0.5
    mu_q = mu_p + 0.05 * torch.randn(n, dim, generator=g)
    sigma_q = sigma_p * 3.0
    x = mu_p + sigma_p * torch.randn(n, dim, generator=g)
    x64, mq, sq, mp, sp = (t.double() for t in (x, mu_q, sigma_q, mu_p, sigma_p))
    zp, zq = (x64 - mp) / sp, (x64 - mq) / sq
    terms = -0.5 * zp * zp + 0.5 * zq * zq + torch.log(sq) - torch.log(sp)
    noise = -1.0 / dim + 0.2 / math.sqrt(dim) * torch.randn(n, dim, generator=g, dtype=torch.float64)
    s_q, s_p = (noise - terms).float(), torch.zeros(n, dim)
    whole = terms + (s_q.double() - s_p.double())  # each dim's whole term, as every backend forms it
    log_rho = torch.tensor([math.fsum(r) for r in whole.tolist()], dtype=torch.float64)
    u_accept = torch.exp(log_rho).float()
    assert (u_accept < 1).all()  # log rho ~ -1 +- 0.2: a valid uniform
    exact = torch.log(u_accept.double()) < log_rho
    tries = 2
    return ([x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, torch.rand(n, tries, dim, generator=g),
             torch.rand(n, tries, generator=g)], exact)


@pytest.mark.parametrize("backend", [b for b in ALL_BACKENDS if b != "triton"] +
                         [pytest.param("triton", marks=pytest.mark.slow)] * ("triton" in ALL_BACKENDS))
@pytest.mark.parametrize("dim", [2**16, pytest.param(2**20, marks=pytest.mark.slow)])
def test_cspd_verify_agrees_at_large_dim(backend, dim):
    """Every backend takes the decisions of exactly rounded sums at D up to 2^20 (the CPU kernel's sequential
    float64 sums did not), and the same resampling decisions as the reference."""
    args, exact = _large_d_case(dim, n=64 if dim <= 2**16 else 4)
    got = _cpu(sk.cspd_verify(*_on(backend, *args), backend=backend, validate=False))
    assert got[1].tolist() == exact.tolist()
    want = reference.cspd_verify(*args)
    assert torch.equal(got[2], want[2])


# ------------------------------------------------------------------------------------------ verify_tree


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("where", ["root", "accepted", "q"])
def test_verify_tree_reports_bad_rows_it_loads(backend, where):
    """A NaN / negative entry in a p row the walk loads (the root, an accepted node) or in the q row of a node
    whose children are tested is code 6 on every backend, even away from the tested tokens (the CPU kernel
    reported it; the reference and Triton returned a result)."""
    vocab = 6
    p = torch.full((1, 3, vocab), 1.0 / vocab)
    p[0, 0, 1] = 0.9  # the root's child (token 1) is accepted with u = 0
    q = torch.full((1, 3, vocab), 1.0 / vocab)
    tokens = torch.tensor([[0, 1, 2]])
    parents = torch.tensor([[-1, 0, 1]])
    if where == "root":
        p[0, 0, 5] = NAN
    elif where == "accepted":
        p[0, 1, 4] = -0.1  # node 1's row: loaded when node 1 is accepted, before node 2 is tested
    else:
        q[0, 0, 4] = NAN
    u_accept = torch.tensor([[0.0, 0.0, 0.99]])
    u_sample = torch.tensor([0.5])
    args = _on(backend, p, q, tokens, parents, u_accept, u_sample)
    out = _cpu(sk.verify_tree(*args, backend=backend, validate=False))
    assert out[2].tolist() == [-6] and out[1].tolist() == [0]
    with raises_bad_row(match="status code 6"):
        sk.verify_tree(*args, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_neighbor_table_never_lists_self_next_to_nan_distances(backend):
    """Found by the fuzz suite: with a NaN distance in the row (to a non-finite code), the reference's self marker
    (a NaN distance too) tied with it and, by id order, listed the code as its own neighbour."""
    book = torch.tensor([[-1.3754044771194458], [-INF], [-0.9555367231369019]])
    got = _cpu(sk.neighbor_table(*_on(backend, book), 2, backend=backend, validate=False))
    assert got.tolist() == [[2, 1], [-6, -6], [0, 1]]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_verify_chain_gsd_reports_a_nan_embedding_it_compares(backend):
    """GSD through verify_chain: a NaN embedding row of a window member whose distance the tested draft's group
    computes is code 6 for that row on every backend (the group's own op already reported it); rows whose groups
    never compare that code are verified as usual."""
    vocab, drafts = 8, 2
    gen = torch.Generator().manual_seed(21)
    p = torch.softmax(torch.randn(3, drafts + 1, vocab, generator=gen), -1)
    emb = torch.nn.functional.normalize(torch.randn(vocab, 3, generator=gen), dim=-1)
    draft = p[:, :drafts].argmax(-1)
    emb[int(draft[1, 0])] = NAN  # row 1's first tested draft: its own embedding row is compared
    kwargs = dict(method="gsd", embeddings=emb, rank_window=(vocab - 1, vocab - 1), p_thr=1.0, d_thr=4.0)
    u_accept, u_sample = torch.rand(3, drafts, generator=gen), torch.rand(3, generator=gen)
    want = reference.verify_chain(p, None, draft, u_accept, u_sample, **kwargs)
    assert want[1][1].item() == -6
    device = device_for(backend)
    on = lambda t: t.to(device)  # noqa: E731
    got = sk.verify_chain(on(p), None, on(draft), on(u_accept), on(u_sample), backend=backend, validate=False,
                          **{**kwargs, "embeddings": on(emb)})
    assert got[1].cpu().tolist() == want[1].tolist() and got[0].cpu().tolist() == want[0].tolist()
