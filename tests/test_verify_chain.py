"""verify_chain: named cases, backend parity with the reference, ragged batches, distribution
preservation of "exact", and the bounds of the relaxed methods."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _inputs import chain_case, codebook
from conftest import device_for
from stats import ALPHA, chi_square_pvalue, histogram, tv_bound

# ------------------------------------------------------------------ named tiny cases (hand-computed)


def _one(p, q, draft, ua, us, **kw):
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return sk.verify_chain(t(p), t(q), torch.tensor(draft, dtype=torch.int64), t(ua), t(us), **kw)


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
class TestNamedCases:
    def test_all_accepted_bonus(self, backend_name):
        p = [[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
        a, t = _one(p, None, [[1, 2]], [[0.99, 0.99]], [0.5], backend=backend_name)
        assert a.tolist() == [2] and t.tolist() == [0]  # bonus from p[:, 2]

    def test_first_rejected_residual(self, backend_name):
        p = [[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]
        q = [[[0.0, 1.0, 0.0]]]
        # p(1)/q(1) = 0.5 < u = 0.7: reject; residual max(0, p - q) = (0.5, 0, 0) -> token 0
        a, t = _one(p, q, [[1]], [[0.7]], [0.99], backend=backend_name)
        assert a.tolist() == [0] and t.tolist() == [0]

    def test_one_hot_q_removes_draft(self, backend_name):
        p = [[[0.2, 0.8], [1.0, 0.0]]]
        a, t = _one(p, None, [[0]], [[0.5]], [0.0], backend=backend_name)  # 0.5 >= 0.2: reject, x removed
        assert a.tolist() == [0] and t.tolist() == [1]

    def test_zero_residual_falls_back_to_p(self, backend_name):
        p = [[[0.3, 0.7], [1.0, 0.0]]]
        q = [[[0.3, 0.7]]]  # p == q: the residual is all zero; acceptance of x=1 needs u*0.7 < 0.7
        a, t = _one(p, q, [[1]], [[0.99999]], [0.1], backend=backend_name)
        assert a.tolist() == [1]
        # force a rejection through q(x) > p(x) with the same residual-zero situation
        a, t = _one([[[0.0, 1.0], [1.0, 0.0]]], [[[0.0, 1.0]]], [[1]], [[0.0]], [0.2], backend=backend_name)
        assert a.tolist() == [1] and t.tolist() == [0]

    def test_zero_drafts_is_plain_sampling(self, backend_name):
        p = [[[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]]
        a, t = _one(p, None, [[0]], [[0.0]], [0.6], num_drafts=torch.tensor([0]), backend=backend_name)
        assert a.tolist() == [0] and t.tolist() == [2]

    def test_vocab_one(self, backend_name):
        a, t = _one([[[1.0], [1.0], [1.0]]], None, [[0, 0]], [[0.9, 0.3]], [0.7], backend=backend_name)
        assert a.tolist() == [2] and t.tolist() == [0]

    def test_q_zero_at_draft_accepts_iff_p_positive(self, backend_name):
        p = [[[0.5, 0.5], [1.0, 0.0]]]
        a, _ = _one(p, [[[1.0, 0.0]]], [[1]], [[0.999]], [0.5], backend=backend_name)
        assert a.tolist() == [1]
        a, _ = _one([[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0]]], [[1]], [[0.0]], [0.5], backend=backend_name)
        assert a.tolist() == [0]  # p(x) = 0 is never accepted, even with u = 0

    def test_inverse_cdf_ties_and_zero_weights(self, backend_name):
        p = [[[0.0, 0.5, 0.0, 0.5]]]  # no drafts: sample from p[:, 0]; u = 0.5 sits on the boundary
        a, t = _one(p, None, [[]], [[]], [0.5], backend=backend_name)
        assert t.tolist() == [3]
        a, t = _one(p, None, [[]], [[]], [0.0], backend=backend_name)
        assert t.tolist() == [1]  # never a zero-weight token


# ------------------------------------------------------------------ parity with the reference

METHOD_KWARGS = {
    "exact": lambda cb: {},
    "gsd": lambda cb: {},
    "gsd_emb": lambda cb: {"embeddings": torch.nn.functional.normalize(cb, dim=-1), "rank_window": (4, 3)},
    "lantern_delta": lambda cb: {"neighbors": reference.neighbor_table(cb, 6), "delta": 0.2},
    "lantern_lam": lambda cb: {"neighbors": reference.neighbor_table(cb, 6), "lam": 3.0},
}


def _method(name):
    return name.split("_")[0]


@pytest.mark.parametrize("method", list(METHOD_KWARGS))
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_random(backend, method, with_q, dtype, seed):
    device = device_for(backend)
    case = chain_case(batch=12, drafts=6, vocab=37, with_q=with_q, seed=seed, device=device, dtype=dtype)
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v
          for k, v in METHOD_KWARGS[method](codebook(37, seed=seed)).items()}
    got = sk.verify_chain(**case, method=_method(method), backend=backend, **kw)
    want = sk.verify_chain(**case, method=_method(method), backend="reference", **kw)
    assert torch.equal(got[0].cpu(), want[0].cpu())
    assert torch.equal(got[1].cpu(), want[1].cpu())


@pytest.mark.parametrize("vocab", [1, 2, 7, 1025, 4096])
def test_parity_vocab_sizes(backend, vocab):
    device = device_for(backend)
    case = chain_case(batch=5, drafts=4, vocab=vocab, seed=vocab, device=device, zeros=0.0)
    got = sk.verify_chain(**case, backend=backend)
    want = sk.verify_chain(**case, backend="reference")
    assert torch.equal(got[0].cpu(), want[0].cpu()) and torch.equal(got[1].cpu(), want[1].cpu())


def test_zero_length_chain(backend):
    device = device_for(backend)
    case = chain_case(batch=4, drafts=0, vocab=9, device=device)
    got = sk.verify_chain(**case, backend=backend)
    want = sk.verify_chain(**case, backend="reference")
    assert got[0].tolist() == [0] * 4 and torch.equal(got[1].cpu(), want[1].cpu())


def test_batch_invariance(backend):
    """A row's outputs equal those of running it alone with the same uniforms, whatever its neighbours."""
    device = device_for(backend)
    case = chain_case(batch=9, drafts=5, vocab=21, seed=3, device=device)
    batched = sk.verify_chain(**case, backend=backend)
    for b in range(9):
        row = {k: (None if v is None else v[b : b + 1]) for k, v in case.items()}
        alone = sk.verify_chain(**row, backend=backend)
        assert alone[0].item() == batched[0][b].item() and alone[1].item() == batched[1][b].item()
    shuffled = torch.randperm(9)
    perm = {k: (None if v is None else v[shuffled.to(device)]) for k, v in case.items()}
    out = sk.verify_chain(**perm, backend=backend)
    assert torch.equal(out[0], batched[0][shuffled.to(device)]) and torch.equal(out[1], batched[1][shuffled.to(device)])


def test_accept_len_within_num_drafts(backend):
    device = device_for(backend)
    case = chain_case(batch=64, drafts=7, vocab=11, seed=5, device=device, with_q=False)
    case["u_accept"].zero_()  # everything with p(x) > 0 passes
    a, _ = sk.verify_chain(**case, backend=backend)
    assert (a <= case["num_drafts"]).all() and (a >= 0).all()


# ------------------------------------------------------------------ distribution preservation ("exact")

VOCAB = 8


def _far_apart(gen):
    """Target and draft rows with TV >= 0.3, each with zeros where the other has mass."""
    p = torch.tensor([0.30, 0.0, 0.10, 0.05, 0.25, 0.0, 0.20, 0.10])
    q = torch.tensor([0.05, 0.30, 0.0, 0.25, 0.05, 0.15, 0.0, 0.20])
    p2 = torch.tensor([0.05, 0.15, 0.30, 0.0, 0.10, 0.20, 0.05, 0.15])
    q2 = torch.tensor([0.40, 0.0, 0.05, 0.30, 0.0, 0.05, 0.20, 0.0])
    bonus = torch.tensor([0.1, 0.2, 0.0, 0.3, 0.1, 0.1, 0.1, 0.1])
    assert 0.5 * (p - q).abs().sum() >= 0.3 and 0.5 * (p2 - q2).abs().sum() >= 0.3
    return torch.stack([p, p2, bonus]), torch.stack([q, q2])


@pytest.mark.parametrize("with_q", [True, False])
def test_exact_preserves_target_distribution(backend, with_q):
    """Chi-square: the token emitted at positions 0 and 1 (given position 1 is reached) follows p_i, and the
    bonus token (given both drafts pass) follows the last row. N = 2e5 trials, one per batch row."""
    device = device_for(backend)
    n = 200_000
    gen = torch.Generator().manual_seed(1234)
    p_rows, q_rows = _far_apart(gen)
    p = p_rows.expand(n, 3, VOCAB).contiguous()
    if with_q:
        q = q_rows.expand(n, 2, VOCAB).contiguous()
        draft = torch.multinomial(q.view(-1, VOCAB), 1, generator=gen).view(n, 2)
    else:  # fixed, arbitrary point-mass drafts
        q = None
        draft = torch.tensor([[4, 2]]).expand(n, 2).contiguous()
    ua, us = torch.rand(n, 2, generator=gen), torch.rand(n, generator=gen)
    a, t = sk.verify_chain(p.to(device), None if q is None else q.to(device), draft.to(device), ua.to(device),
                           us.to(device), backend=backend)
    a, t = a.cpu(), t.cpu()
    first = torch.where(a > 0, draft[:, 0], t)
    assert chi_square_pvalue(histogram(first, VOCAB), p_rows[0]) > ALPHA
    reached = a >= 1
    second = torch.where(a[reached] > 1, draft[reached, 1], t[reached])
    assert chi_square_pvalue(histogram(second, VOCAB), p_rows[1]) > ALPHA
    bonus = t[a == 2]
    assert bonus.numel() > 1000
    assert chi_square_pvalue(histogram(bonus, VOCAB), p_rows[2]) > ALPHA


def test_chi_square_detects_a_broken_residual():
    """Mutation check: sampling the recovered token from p instead of max(0, p - q) must fail the test above."""
    n = 200_000
    gen = torch.Generator().manual_seed(7)
    p_rows, q_rows = _far_apart(gen)
    q = q_rows[0].expand(n, VOCAB)
    draft = torch.multinomial(q, 1, generator=gen).squeeze(1)
    accepted = torch.rand(n, generator=gen) * q.gather(1, draft[:, None]).squeeze(1) < p_rows[0][draft]
    wrong = torch.multinomial(p_rows[0].expand(n, VOCAB), 1, generator=gen).squeeze(1)
    first = torch.where(accepted, draft, wrong)
    assert chi_square_pvalue(histogram(first, VOCAB), p_rows[0]) < ALPHA


# ------------------------------------------------------------------ relaxed methods: properties


def _relaxed_setup(n=2000, vocab=24, seed=0):
    case = chain_case(batch=n, drafts=4, vocab=vocab, with_q=False, ragged=False, seed=seed, zeros=0.0)
    table = reference.neighbor_table(codebook(vocab, seed=seed), vocab - 1)
    return case, table


def test_lantern_delta_zero_and_lambda_one_equal_exact(backend):
    case, table = _relaxed_setup()
    exact = sk.verify_chain(**case, backend=backend)
    for kw in ({"delta": 0.0}, {"lam": 1.0}):
        relaxed = sk.verify_chain(**case, method="lantern", neighbors=table, backend=backend, **kw)
        assert torch.equal(relaxed[0], exact[0]) and torch.equal(relaxed[1], exact[1])


def test_lantern_acceptance_monotone_in_delta(backend):
    case, table = _relaxed_setup()
    previous = None
    for delta in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0):
        a, _ = sk.verify_chain(**case, method="lantern", neighbors=table, delta=delta, backend=backend)
        if previous is not None:
            assert (a >= previous).all()
        previous = a
    assert previous.float().mean() > 0


def test_gsd_accepts_at_least_exact_for_one_hot_drafts(backend):
    case, _ = _relaxed_setup()
    exact, _ = sk.verify_chain(**case, backend=backend)
    grouped, _ = sk.verify_chain(**case, method="gsd", backend=backend)
    assert (grouped >= exact).all() and grouped.float().mean() > exact.float().mean()


def test_gsd_degenerate_settings_equal_exact(backend):
    case, _ = _relaxed_setup()
    exact = sk.verify_chain(**case, backend=backend)
    for kw in ({"rank_window": (0, 0)}, {"p_thr": 0.0}):
        out = sk.verify_chain(**case, method="gsd", backend=backend, **kw)
        assert torch.equal(out[0], exact[0]) and torch.equal(out[1], exact[1])
    emb = torch.nn.functional.normalize(codebook(24), dim=-1)
    out = sk.verify_chain(**case, method="gsd", embeddings=emb, d_thr=0.0, backend=backend)
    assert torch.equal(out[0], exact[0]) and torch.equal(out[1], exact[1])


def _single_candidate_output(method_kwargs, p_row, x, n, seed, backend):
    gen = torch.Generator().manual_seed(seed)
    vocab = p_row.numel()
    p = torch.stack([p_row, torch.full((vocab,), 1.0 / vocab)]).expand(n, 2, vocab).contiguous()
    draft = torch.full((n, 1), x)
    a, t = sk.verify_chain(p, None, draft, torch.rand(n, 1, generator=gen), torch.rand(n, generator=gen),
                           backend=backend, **method_kwargs)
    return torch.where(a > 0, draft[:, 0], t)


def test_lantern_single_candidate_follows_closed_form(backend):
    """One deterministic candidate: the output is exactly p with A's mass moved onto x, so TV(out, p) = c_{m*} <= delta."""
    vocab, n, delta, x = 12, 200_000, 0.15, 3
    table = reference.neighbor_table(codebook(vocab, seed=4), 5)
    p_row = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(9)), -1)
    out = _single_candidate_output({"method": "lantern", "neighbors": table, "delta": delta}, p_row, x, n, 11, backend)
    p_tilde, merged = reference.lantern_relaxed_mass(p_row[None], torch.tensor([x]), table, delta=delta)
    closed = p_row.clone().double()
    moved = table[x, : int(merged)].long()
    closed[x] += closed[moved].sum()
    closed[moved] = 0
    assert merged.item() >= 1  # the test exercises a real merge
    assert chi_square_pvalue(histogram(out, vocab), closed) > ALPHA
    empirical = histogram(out, vocab).double() / n
    assert 0.5 * (empirical - p_row.double()).abs().sum() <= delta + tv_bound(vocab, n)


def test_gsd_single_candidate_follows_closed_form(backend):
    """One-hot q: out(x) = P_G and out(y) = p(y) (1 - P_G) / (1 - p(x)) for y != x."""
    vocab, n, x = 10, 200_000, 2
    p_row = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(5)) * 0.5, -1)
    out = _single_candidate_output({"method": "gsd"}, p_row, x, n, 13, backend)
    group_p, _ = reference.gsd_group_mass(p_row[None], None, torch.tensor([x]))
    closed = p_row.double() * (1 - group_p.double()) / (1 - p_row[x].double())
    closed[x] = group_p.double()
    assert group_p.item() > p_row[x].item() + 0.05
    assert chi_square_pvalue(histogram(out, vocab), closed) > ALPHA


def test_ignored_draft_ids_are_never_read(backend):
    """Regression: the reference gathered draft ids past num_drafts (which may hold anything, e.g. -1)."""
    p = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    args = (p, None, torch.tensor([[-1]]), torch.tensor([[0.5]]), torch.tensor([0.5]))
    for name in ("reference", backend):
        a, t = sk.verify_chain(*(x.to(device_for(backend)) if x is not None else None for x in args),
                               num_drafts=torch.tensor([0], device=device_for(backend)), backend=name)
        assert a.tolist() == [0] and t.tolist() == [1]


def test_repeated_neighbour_ids_agree_across_backends(backend):
    """Regression: a repeated code in a neighbour row was zeroed order-dependently by the chain reference."""
    dev = device_for(backend)
    p = torch.tensor([[[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]], device=dev)
    table = torch.tensor([[1, 1], [0, 0], [0, 1]], dtype=torch.int32, device=dev)
    args = (p, None, torch.tensor([[0]], device=dev), torch.tensor([[0.99]], device=dev), torch.tensor([0.3], device=dev))
    outs = [sk.verify_chain(*args, method="lantern", neighbors=table, delta=0.35, backend=name)
            for name in ("reference", backend)]
    assert outs[0][1].tolist() == outs[1][1].tolist() == [2]
