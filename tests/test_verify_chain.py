"""verify_chain on every backend: named cases, parity with the reference (random, half-precision, edge and
hypothesis-generated inputs; vocabularies across the kernels' block and tile boundaries), ragged batches,
distribution preservation of "exact", the bounds of the relaxed methods, opcheck, and backend-specific checks
(Triton's chunk loops, CUDA streams and graph replay)."""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specdec_kernels as sk
from specdec_kernels import _methods, reference

from _backends import TRITON_INTERPRETED, assert_same, check_parity, device_for, gpu_only, not_triton, to_device
from _inputs import chain_case, codebook, method_kwargs, probs
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90
from stats import ALPHA, chi_square_pvalue, histogram, tv_bound

CUDA_TILE = 1024 * 4  # the CUDA kernel's inverse-CDF tile (kChainBlock * kChainItems)

# ------------------------------------------------------------------ named cases (hand-computed), every backend


def _one(backend, p, q, draft, ua, us, **kw):
    device = device_for(backend)
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    a, tok = sk.verify_chain(t(p), t(q), torch.tensor(draft, dtype=torch.int64, device=device), t(ua), t(us),
                             backend=backend, **to_device(kw, device))
    return a.tolist(), tok.tolist()


class TestNamedCases:
    def test_all_accepted_bonus(self, backend):
        p = [[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
        assert _one(backend, p, None, [[1, 2]], [[0.99, 0.99]], [0.5]) == ([2], [0])  # bonus from p[:, 2]

    def test_first_rejected_residual(self, backend):
        # p(1)/q(1) = 0.5 < u = 0.7: reject; residual max(0, p - q) = (0.5, 0, 0) -> token 0
        p, q = [[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], [[[0.0, 1.0, 0.0]]]
        assert _one(backend, p, q, [[1]], [[0.7]], [0.99]) == ([0], [0])

    def test_one_hot_q_removes_draft(self, backend):
        # 0.5 >= 0.2: reject, x removed from the residual
        assert _one(backend, [[[0.2, 0.8], [1.0, 0.0]]], None, [[0]], [[0.5]], [0.0]) == ([0], [1])

    def test_zero_residual_falls_back_to_p(self, backend):
        # p == q: the residual is all zero; acceptance of x = 1 needs u * 0.7 < 0.7
        assert _one(backend, [[[0.3, 0.7], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.99999]], [0.1])[0] == [1]
        assert _one(backend, [[[0.0, 1.0], [1.0, 0.0]]], [[[0.0, 1.0]]], [[1]], [[0.0]], [0.2]) == ([1], [0])
        # q >= p everywhere (an unnormalised p): x = 1 is rejected and max(0, p - q) is zero, so the token comes
        # from p = (0.3, 0.2) itself
        assert _one(backend, [[[0.3, 0.2], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.5]], [0.2]) == ([0], [0])
        assert _one(backend, [[[0.3, 0.2], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.5]], [0.7]) == ([0], [1])

    def test_typical_threshold_sides(self, backend):
        # row 0: H = 0.8018, alpha e^-H = 0.1346 > epsilon = 0.09, so p(1) = 0.2 > 0.09 passes; row 1: H = 0.3944,
        # threshold min(0.09, 0.2022) = 0.09 > p(0) = 0.05: rejected, and the token comes from p[1] itself
        # (u_sample 0.5 crosses at token 2), whatever q says
        p = [[[0.7, 0.2, 0.1, 0.0], [0.05, 0.05, 0.9, 0.0], [1.0, 0.0, 0.0, 0.0]]]
        q = [[[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]]
        assert _one(backend, p, q, [[1, 0]], [[0.99, 0.0]], [0.5], method="typical") == ([1], [2])
        assert _one(backend, p, None, [[1, 0]], [[0.99, 0.0]], [0.5], method="typical") == ([1], [2])
        # a uniform row: H = log 4, alpha e^-H = 0.075 < epsilon = 0.5, so p(x) = 0.25 passes on the entropy side;
        # alpha = 2 lifts the threshold to min(0.5, 0.5): rejected, token 2 from p[0] (u_sample 0.5)
        p = [[[0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]]]
        assert _one(backend, p, None, [[2]], [[0.5]], [0.5], method="typical", epsilon=0.5) == ([1], [3])
        assert _one(backend, p, None, [[2]], [[0.5]], [0.5], method="typical", epsilon=0.5, alpha=2.0) == ([0], [2])

    def test_zero_drafts_is_plain_sampling(self, backend):
        p = [[[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]]
        num = torch.tensor([0], device=device_for(backend))
        assert _one(backend, p, None, [[0]], [[0.0]], [0.6], num_drafts=num) == ([0], [2])

    def test_vocab_one(self, backend):
        assert _one(backend, [[[1.0], [1.0], [1.0]]], None, [[0, 0]], [[0.9, 0.3]], [0.7]) == ([2], [0])
        # with V = 1, q = 1 as well: u * 1 < 1 always passes
        assert _one(backend, [[[1.0], [1.0]]], [[[1.0]]], [[0]], [[0.999]], [0.3]) == ([1], [0])

    def test_q_zero_at_draft_accepts_iff_p_positive(self, backend):
        assert _one(backend, [[[0.5, 0.5], [1.0, 0.0]]], [[[1.0, 0.0]]], [[1]], [[0.999]], [0.5])[0] == [1]
        # p(x) = 0 is never accepted, even with u = 0
        assert _one(backend, [[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0]]], [[1]], [[0.0]], [0.5])[0] == [0]

    def test_inverse_cdf_ties_and_zero_weights(self, backend):
        p = [[[0.0, 0.5, 0.0, 0.5]]]  # no drafts: sample from p[:, 0]
        assert _one(backend, p, None, [[]], [[]], [0.5])[1] == [3]  # u * W sits on a boundary: strictly above
        assert _one(backend, p, None, [[]], [[]], [0.0])[1] == [1]  # never a zero-weight token

    def test_ignored_draft_ids_are_never_read(self, backend):
        """Regression: the reference gathered draft ids past num_drafts (which may hold anything, e.g. -1)."""
        num = torch.tensor([0], device=device_for(backend))
        assert _one(backend, [[[0.5, 0.5], [0.25, 0.75]]], None, [[-1]], [[0.5]], [0.5], num_drafts=num) == ([0], [1])

    def test_lantern_moves_merged_mass_onto_x(self, backend):
        """Rejected x = 0 with neighbours 1, 2 merged (c = 0.25, 0.375 <= delta): the residual is p without x and A,
        i.e. only token 3; exact dyadic sums, so the boundary is hit exactly in any order."""
        p = [[[0.5, 0.25, 0.125, 0.125], [1.0, 0.0, 0.0, 0.0]]]
        nb = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=torch.int32)
        kw = dict(method="lantern", neighbors=nb, delta=0.375)
        assert _one(backend, p, None, [[0]], [[0.9]], [0.0], **kw) == ([0], [3])  # p~ = 0.875 < 0.9: rejected
        assert _one(backend, p, None, [[0]], [[0.875]], [0.0], **kw)[0] == [1]  # u * 1 <= p~ (equality accepts)

    def test_repeated_neighbour_ids(self, backend):
        """Regression: a repeated code in a neighbour row was zeroed order-dependently by the chain reference."""
        nb = torch.tensor([[1, 1], [0, 0], [0, 1]], dtype=torch.int32)
        p = [[[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]]
        assert _one(backend, p, None, [[0]], [[0.99]], [0.3], method="lantern", neighbors=nb, delta=0.35)[1] == [2]

    def test_gsd_group_rescues_a_draft(self, backend):
        # x = 1 has p 0.3; its group {0, 1, 2} has mass 0.9: u = 0.5 fails exact and passes gsd
        p = [[[0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 0.0, 1.0]]]
        assert _one(backend, p, None, [[1]], [[0.5]], [0.5])[0] == [0]
        kw = dict(method="gsd", rank_window=(1, 1), p_thr=0.05)
        assert _one(backend, p, None, [[1]], [[0.5]], [0.5], **kw) == ([1], [3])


# ------------------------------------------------------------------ parity with the reference

CB = {n: codebook(n, seed=n) for n in (37, 64)}

METHOD_KWARGS = {  # every rule of the method table, plus settings that stress a rule harder
    **{name: (lambda cb, name=name: method_kwargs(name, cb.shape[0], k=6)) for name in _methods.CHAIN_METHODS},
    "gsd_emb": lambda cb: {"embeddings": torch.nn.functional.normalize(cb, dim=-1), "rank_window": (4, 3),
                           "p_thr": 0.3, "d_thr": 1.0},
    "lantern_lam": lambda cb: {"neighbors": reference.neighbor_table(cb, 6), "lam": 3.0},
    "typical_entropy": lambda cb: {"epsilon": 0.5, "alpha": 0.9},  # the entropy side decides more often
}


def _method(name):
    return name.split("_")[0]


def _interpreted_subset(method, with_q, dtype, seed):
    """On the Triton interpreter: every method in float32, three in half precision, one seed."""
    return seed == 0 and (dtype == torch.float32 or (with_q and method in ("exact", "gsd_emb", "lantern")))


@pytest.mark.interpreter(keep=_interpreted_subset)
@pytest.mark.parametrize("method", list(METHOD_KWARGS))
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_random(kernel_backend, method, with_q, dtype, seed):
    case = chain_case(batch=12, drafts=6, vocab=37, with_q=with_q, seed=seed, dtype=dtype)
    kw = METHOD_KWARGS[method](codebook(37, seed=seed))
    check_parity(sk.verify_chain, kernel_backend, **case, method=_method(method), **kw)


@functools.cache
def _big_table(vocab: int, k: int, seed: int) -> torch.Tensor:
    """A neighbour table: the reference's up to 1024 codes; above that a cheap valid stand-in (k distinct non-self
    ids per row), since the relaxed-mass semantics do not depend on the geometry."""
    if vocab <= 1024:
        return reference.neighbor_table(codebook(vocab, dim=8, seed=seed), k)
    offsets = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(seed))[:k] + 1
    return ((torch.arange(vocab)[:, None] + offsets) % vocab).to(torch.int32)


def _large_kwargs(method: str, vocab: int, seed: int) -> dict:
    if method == "gsd":
        return {"embeddings": torch.nn.functional.normalize(codebook(vocab, dim=8, seed=seed), dim=-1),
                "rank_window": (7, 6)}
    if method == "gsd_wide":
        return {"rank_window": (25, 25), "p_thr": 0.5}
    if method == "lantern":
        return {"neighbors": _big_table(vocab, min(vocab - 1, 64), seed), "delta": 0.2}
    if method == "lantern_lam":
        return {"neighbors": _big_table(vocab, min(vocab - 1, 200), seed), "lam": 5.0}
    return method_kwargs(method, vocab, seed=seed) if method in _methods.METHODS else {}


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("method", ["exact", "gsd", "gsd_wide", "lantern", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_parity_many_rows_sparse(kernel_backend, method, with_q, dtype):
    """24 rows over 997 codes with half the probabilities zero; wide GSD windows and long neighbour rows."""
    case = chain_case(batch=24, drafts=7, vocab=997, with_q=with_q, seed=3, dtype=dtype, zeros=0.5)
    check_parity(sk.verify_chain, kernel_backend, **case, method=_method(method), **_large_kwargs(method, 997, 3))


@pytest.mark.interpreter(keep=lambda vocab: vocab <= 200)
@pytest.mark.parametrize("vocab", [1, 2, 7, 9, 200, 1025, 4096])
def test_parity_vocab_sizes(kernel_backend, vocab):
    case = chain_case(batch=5, drafts=4, vocab=vocab, seed=vocab, zeros=0.0)
    check_parity(sk.verify_chain, kernel_backend, **case)
    check_parity(sk.verify_chain, kernel_backend, **{**case, "q": None})


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("vocab", [1, 2, 33, CUDA_TILE - 1, CUDA_TILE, CUDA_TILE + 1, 8192, 16384])
@pytest.mark.parametrize("method", _methods.CHAIN_METHODS)
def test_parity_codebook_sizes(kernel_backend, vocab, method):
    """Top-k-like rows (most of the vocabulary at zero) as image models produce them, across the CUDA tile."""
    if _methods.METHODS[method].needs and vocab < 2:
        pytest.skip("a neighbour table needs two codes")
    case = chain_case(batch=6, drafts=15, vocab=vocab, seed=vocab, zeros=0.0 if vocab < 64 else 0.88)
    check_parity(sk.verify_chain, kernel_backend, **case, method=method, **_large_kwargs(method, vocab, seed=1))


def test_zero_length_chain(kernel_backend):
    accept_len, _ = check_parity(sk.verify_chain, kernel_backend, **chain_case(batch=4, drafts=0, vocab=9, seed=1))
    assert accept_len.tolist() == [0] * 4


def test_unused_drafts_are_never_read(kernel_backend):
    """Draft ids past num_drafts[b] are ignored: -1 padding there gives the outputs of valid padding. (The
    reference itself gathers every draft id, so it runs with valid padding.)"""
    case = chain_case(batch=6, drafts=3, vocab=17, seed=2)
    case["num_drafts"] = torch.tensor([0, 0, 1, 3, 2, 0])
    padded = case["draft"].masked_fill(torch.arange(3) >= case["num_drafts"][:, None], -1)
    device = device_for(kernel_backend)
    nb = reference.neighbor_table(codebook(17, 4, seed=17), 3)
    for method, kw in (("exact", {}), ("gsd", {}), ("lantern", {"neighbors": nb, "delta": 0.2})):
        want = sk.verify_chain(**case, method=method, **kw, backend="reference")
        got = sk.verify_chain(**to_device({**case, "draft": padded}, device), method=method, **to_device(kw, device),
                              backend=kernel_backend)
        assert_same(got, want)


def test_lantern_with_q_residual(kernel_backend):
    """x = 1 rejected with an explicit q: A's mass is moved onto x before q is subtracted."""
    p = torch.tensor([[[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]]])
    q = torch.tensor([[[0.0, 0.5, 0.25, 0.25]]])
    nb = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=torch.int32)
    for us in (0.0, 0.3, 0.9):
        args = (p, q, torch.tensor([[1]]), torch.tensor([[0.99]]), torch.tensor([us]))
        check_parity(sk.verify_chain, kernel_backend, *args, method="lantern", neighbors=nb, lam=1.5)
        check_parity(sk.verify_chain, kernel_backend, *args, method="lantern", neighbors=nb, delta=0.5)


def test_lantern_rejections_with_merged_neighbours(kernel_backend):
    """Many rejections at positions where neighbours were merged (large budgets, u close to 1)."""
    gen = torch.Generator().manual_seed(21)
    p = probs(8, 4, 37, sharpness=0.5, gen=gen)
    draft = torch.randint(0, 37, (8, 3), generator=gen)
    nb = reference.neighbor_table(codebook(37, 4, seed=37), 8)
    for q in (None, probs(8, 3, 37, sharpness=0.5, gen=gen)):
        for kw in ({"delta": 0.1}, {"delta": 0.3}, {"lam": 4.0}):
            case = dict(p=p, q=q, draft=draft, u_accept=0.9 + 0.1 * torch.rand(8, 3, generator=gen),
                        u_sample=torch.rand(8, generator=gen))
            _, merged = reference.lantern_relaxed_mass(p[:, 0], draft[:, 0], nb, **kw)
            assert (merged > 0).any()
            check_parity(sk.verify_chain, kernel_backend, **case, method="lantern", neighbors=nb, **kw)


def test_gsd_ties_and_wide_window(kernel_backend):
    """Quantised probabilities (many exact ties: rank by lower id) and a window wider than the vocabulary."""
    gen = torch.Generator().manual_seed(8)
    p = torch.randint(0, 5, (6, 4, 24), generator=gen).float()
    p[..., 0] += 1.0
    p = p / p.sum(-1, keepdim=True)
    q = torch.randint(0, 3, (6, 3, 24), generator=gen).float() + 0.5
    q = q / q.sum(-1, keepdim=True)
    draft = torch.randint(0, 24, (6, 3), generator=gen)
    case = dict(p=p, q=q, draft=draft, u_accept=torch.rand(6, 3, generator=gen), u_sample=torch.rand(6, generator=gen))
    for kw in ({"rank_window": (2, 3), "p_thr": 0.2}, {"rank_window": (30, 30), "p_thr": 2.0}):
        check_parity(sk.verify_chain, kernel_backend, **case, method="gsd", **kw)
        check_parity(sk.verify_chain, kernel_backend, **{**case, "q": None}, method="gsd", **kw)


@pytest.mark.interpreter(keep=False)
def test_edge_cases(kernel_backend):
    """u = 0 (everything with p(x) > 0 passes), ragged rows over V = 1, p == q everywhere (every residual vanishes:
    the recovered token falls back to p), one-hot targets (the recovered token is forced)."""
    case = chain_case(batch=32, drafts=6, vocab=11, seed=2, with_q=False)
    case["u_accept"].zero_()
    check_parity(sk.verify_chain, kernel_backend, **case)
    check_parity(sk.verify_chain, kernel_backend, torch.ones(3, 3, 1), None, torch.zeros(3, 2, dtype=torch.long),
                 torch.rand(3, 2), torch.rand(3), num_drafts=torch.tensor([0, 1, 2]))
    case = chain_case(batch=16, drafts=3, vocab=13, seed=9)
    case["q"] = case["p"][:, :3].clone()
    case["u_accept"].fill_(0.99999)
    for method in ("exact", "gsd"):
        check_parity(sk.verify_chain, kernel_backend, **case, method=method)
    p = torch.nn.functional.one_hot(torch.randint(0, 50, (8, 4)), 50).float()
    check_parity(sk.verify_chain, kernel_backend, p, None, torch.randint(0, 50, (8, 3)), torch.rand(8, 3),
                 torch.rand(8), num_drafts=torch.full((8,), 3))


@pytest.mark.interpreter(keep=False)
def test_long_accept_prefixes(kernel_backend):
    """More drafts than warps in CUDA's LANTERN phase 1 (one warp per draft) and than threads' first pass."""
    case = chain_case(batch=4, drafts=48, vocab=3000, seed=5, zeros=0.7)
    case["u_accept"] *= 0.02  # nearly everything passes
    for method in ("exact", "lantern"):
        check_parity(sk.verify_chain, kernel_backend, **case, method=method, **_large_kwargs(method, 3000, seed=5))


@pytest.mark.select(not_triton)
@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 6), drafts=st.integers(0, 6), vocab=st.integers(1, 40), seed=st.integers(0, 10**6),
       with_q=st.booleans(), method=st.sampled_from(_methods.CHAIN_METHODS),
       budget=st.floats(0.0, 1.0), ragged=st.booleans())
def test_parity_hypothesis(kernel_backend, batch, drafts, vocab, seed, with_q, method, budget, ragged):
    case = chain_case(batch=batch, drafts=drafts, vocab=vocab, with_q=with_q, seed=seed, ragged=ragged,
                      zeros=0.3 if vocab > 2 else 0.0)
    kw = {}
    if method == "lantern" and vocab >= 2:
        kw = {"neighbors": reference.neighbor_table(codebook(vocab, seed=seed), max(1, min(5, vocab - 1))),
              "delta": budget}
    elif method == "gsd":
        kw = {"p_thr": budget, "rank_window": (seed % 5, seed % 3)}
    elif _methods.METHODS[method].needs:
        method = "exact"  # a table needs two codes
    else:
        kw = method_kwargs(method, vocab, seed=seed)
    check_parity(sk.verify_chain, kernel_backend, **case, method=method, **kw)


# ------------------------------------------------------------------ ragged batches


def test_batch_invariance(kernel_backend):
    """A row's outputs equal those of running it alone with the same uniforms, whatever its neighbours."""
    device = device_for(kernel_backend)
    case = to_device(chain_case(batch=9, drafts=5, vocab=21, seed=3), device)
    batched = sk.verify_chain(**case, backend=kernel_backend)
    for b in range(9):
        row = {k: (None if v is None else v[b : b + 1]) for k, v in case.items()}
        alone = sk.verify_chain(**row, backend=kernel_backend)
        assert alone[0].item() == batched[0][b].item() and alone[1].item() == batched[1][b].item()
    shuffled = torch.randperm(9).to(device)
    perm = {k: (None if v is None else v[shuffled]) for k, v in case.items()}
    out = sk.verify_chain(**perm, backend=kernel_backend)
    assert torch.equal(out[0], batched[0][shuffled]) and torch.equal(out[1], batched[1][shuffled])


@pytest.mark.interpreter(keep=False)
def test_accept_len_within_num_drafts(backend):
    case = to_device(chain_case(batch=64, drafts=7, vocab=11, seed=5, with_q=False), device_for(backend))
    case["u_accept"].zero_()  # everything with p(x) > 0 passes
    a, _ = sk.verify_chain(**case, backend=backend)
    assert (a <= case["num_drafts"]).all() and (a >= 0).all() and (a > 0).any()


# ------------------------------------------------------------------ distribution preservation ("exact")

VOCAB = 8


def _far_apart():
    """Target and draft rows with TV >= 0.3, each with zeros where the other has mass."""
    p = torch.tensor([0.30, 0.0, 0.10, 0.05, 0.25, 0.0, 0.20, 0.10])
    q = torch.tensor([0.05, 0.30, 0.0, 0.25, 0.05, 0.15, 0.0, 0.20])
    p2 = torch.tensor([0.05, 0.15, 0.30, 0.0, 0.10, 0.20, 0.05, 0.15])
    q2 = torch.tensor([0.40, 0.0, 0.05, 0.30, 0.0, 0.05, 0.20, 0.0])
    bonus = torch.tensor([0.1, 0.2, 0.0, 0.3, 0.1, 0.1, 0.1, 0.1])
    assert 0.5 * (p - q).abs().sum() >= 0.3 and 0.5 * (p2 - q2).abs().sum() >= 0.3
    return torch.stack([p, p2, bonus]), torch.stack([q, q2])


@pytest.mark.select(not_triton)
@pytest.mark.parametrize("with_q", [True, False])
def test_exact_preserves_target_distribution(kernel_backend, with_q):
    """Chi-square: the token emitted at positions 0 and 1 (given position 1 is reached) follows p_i, and the
    bonus token (given both drafts pass) follows the last row. N = 2e5 trials, one per batch row."""
    device = device_for(kernel_backend)
    n = 200_000
    gen = torch.Generator().manual_seed(1234)
    p_rows, q_rows = _far_apart()
    p = p_rows.expand(n, 3, VOCAB).contiguous()
    if with_q:
        q = q_rows.expand(n, 2, VOCAB).contiguous()
        draft = torch.multinomial(q.view(-1, VOCAB), 1, generator=gen).view(n, 2)
    else:  # fixed, arbitrary point-mass drafts
        q = None
        draft = torch.tensor([[4, 2]]).expand(n, 2).contiguous()
    ua, us = torch.rand(n, 2, generator=gen), torch.rand(n, generator=gen)
    a, t = sk.verify_chain(*to_device((p, q, draft, ua, us), device), backend=kernel_backend)
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
    p_rows, q_rows = _far_apart()
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


def _on(backend, *values):
    return to_device(values, device_for(backend))


@pytest.mark.select(lambda backend, size: backend != "triton" or size == "small")
@pytest.mark.parametrize("size", ["small", "large"])
def test_degenerate_relaxations_equal_exact(kernel_backend, size):
    """delta = 0, lam = 1, a (0, 0) GSD window, p_thr = 0 and d_thr = 0 with a table reproduce "exact" token for
    token (docs/ALGORITHMS.md §3.3, §3.4); small: 8 rows over 37 codes, large: 2000 rows over 24 codes."""
    if size == "small":
        case, table, vocab = chain_case(batch=8, drafts=5, vocab=37, seed=3), reference.neighbor_table(CB[37], 4), 37
    else:
        (case, table), vocab = _relaxed_setup(), 24
    emb = torch.nn.functional.normalize(codebook(vocab), dim=-1)
    case, table, emb = _on(kernel_backend, case, table, emb)
    exact = sk.verify_chain(**case, backend=kernel_backend)
    for kw in ({"method": "lantern", "neighbors": table, "delta": 0.0},
               {"method": "lantern", "neighbors": table, "lam": 1.0},
               {"method": "gsd", "rank_window": (0, 0)}, {"method": "gsd", "p_thr": 0.0},
               {"method": "gsd", "embeddings": emb, "d_thr": 0.0}):
        assert_same(sk.verify_chain(**case, backend=kernel_backend, **kw), exact)


@pytest.mark.select(not_triton)
def test_lantern_acceptance_monotone_in_delta(kernel_backend):
    case, table = _on(kernel_backend, *_relaxed_setup())
    previous = None
    for delta in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0):
        a, _ = sk.verify_chain(**case, method="lantern", neighbors=table, delta=delta, backend=kernel_backend)
        if previous is not None:
            assert (a >= previous).all()
        previous = a
    assert previous.float().mean() > 0


@pytest.mark.select(not_triton)
def test_gsd_accepts_at_least_exact_for_one_hot_drafts(kernel_backend):
    case, _ = _on(kernel_backend, *_relaxed_setup())
    exact, _ = sk.verify_chain(**case, backend=kernel_backend)
    grouped, _ = sk.verify_chain(**case, method="gsd", backend=kernel_backend)
    assert (grouped >= exact).all() and grouped.float().mean() > exact.float().mean()


def _typical_threshold(p_rows: torch.Tensor, epsilon: float, alpha: float) -> torch.Tensor:
    """min(epsilon, alpha * exp(-H)) per row of ``p_rows`` (..., V), in float64, computed here independently."""
    p64 = p_rows.double()
    entropy = -(p64 * p64.clamp_min(1e-300).log()).sum(-1)
    return torch.clamp(alpha * torch.exp(-entropy), max=epsilon)


@pytest.mark.select(lambda backend, with_q, **_: backend != "triton" or not with_q)
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("epsilon, alpha", [(0.09, 0.3), (0.5, 0.9), (0.02, 5.0)])
def test_typical_accepts_exactly_above_its_threshold(kernel_backend, with_q, epsilon, alpha):
    """The bound of typical acceptance (docs/ALGORITHMS.md §3.11): every accepted draft has p(x) above
    min(epsilon, alpha * exp(-H)), the first rejected one does not, and the token comes from p[b, a]'s support."""
    case = chain_case(batch=40, drafts=5, vocab=29, with_q=with_q, seed=7)
    a, tok = sk.verify_chain(**_on(kernel_backend, case)[0], method="typical", epsilon=epsilon, alpha=alpha,
                             backend=kernel_backend)
    a, tok = a.cpu(), tok.cpu()
    p, draft, n = case["p"], case["draft"], case["num_drafts"]
    threshold = _typical_threshold(p[:, :-1], epsilon, alpha)
    px = p[:, :-1].double().gather(2, draft[..., None]).squeeze(-1)
    margin = (px - threshold).abs() > 1e-9  # no test sits on the threshold within rounding
    assert margin.all()
    for b in range(p.shape[0]):
        assert (px[b, : a[b]] > threshold[b, : a[b]]).all()
        if a[b] < n[b]:
            assert px[b, a[b]] <= threshold[b, a[b]]
        assert p[b, a[b], tok[b]] > 0
    assert 0 < a.sum() < n.sum()  # both outcomes occur


def test_typical_degenerate_settings():
    """epsilon = alpha = inf rejects every draft, so the call is plain sampling from p[b, 0] (the "exact" call with
    no drafts); alpha = 0 (threshold min(epsilon, 0) = 0) accepts exactly the drafts with p(x) > 0."""
    case = chain_case(batch=30, drafts=4, vocab=23, seed=5)
    none = sk.verify_chain(**case, method="typical", epsilon=math.inf, alpha=math.inf,
                           backend="reference")
    plain = sk.verify_chain(**{**case, "num_drafts": torch.zeros_like(case["num_drafts"])}, backend="reference")
    assert_same(none, plain)
    a, _ = sk.verify_chain(**case, method="typical", epsilon=0.3, alpha=0.0, backend="reference")
    positive = case["p"][:, :-1].gather(2, case["draft"][..., None]).squeeze(-1) > 0
    used = torch.arange(4) < case["num_drafts"][:, None]
    assert torch.equal(a, torch.cumprod((positive & used).long(), 1).sum(1))


def test_typical_parameters_are_checked():
    case = chain_case(batch=2, drafts=2, vocab=9, seed=1)
    for bad, match in (({"epsilon": -0.1}, "epsilon"), ({"alpha": float("nan")}, "alpha"),
                       ({"epsilon": True}, "epsilon")):
        with pytest.raises(ValueError, match=match):
            sk.verify_chain(**case, method="typical", **bad)
    with pytest.raises(ValueError, match="only apply to method 'typical'"):
        sk.verify_chain(**case, method="exact", alpha=0.3)


def _single_candidate_output(method_kwargs, p_row, x, n, seed, backend):
    gen = torch.Generator().manual_seed(seed)
    vocab = p_row.numel()
    p = torch.stack([p_row, torch.full((vocab,), 1.0 / vocab)]).expand(n, 2, vocab).contiguous()
    draft = torch.full((n, 1), x)
    args = _on(backend, p, None, draft, torch.rand(n, 1, generator=gen), torch.rand(n, generator=gen))
    a, t = sk.verify_chain(*args, backend=backend, **to_device(method_kwargs, device_for(backend)))
    return torch.where(a.cpu() > 0, draft[:, 0], t.cpu())


@pytest.mark.select(not_triton)
def test_lantern_single_candidate_follows_closed_form(kernel_backend):
    """One deterministic candidate: the output is exactly p with A's mass moved onto x, so TV(out, p) = c_{m*} <= delta."""
    vocab, n, delta, x = 12, 200_000, 0.15, 3
    table = reference.neighbor_table(codebook(vocab, seed=4), 5)
    p_row = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(9)), -1)
    out = _single_candidate_output({"method": "lantern", "neighbors": table, "delta": delta}, p_row, x, n, 11,
                                   kernel_backend)
    p_tilde, merged = reference.lantern_relaxed_mass(p_row[None], torch.tensor([x]), table, delta=delta)
    closed = p_row.clone().double()
    moved = table[x, : int(merged)].long()
    closed[x] += closed[moved].sum()
    closed[moved] = 0
    assert merged.item() >= 1  # the test exercises a real merge
    assert chi_square_pvalue(histogram(out, vocab), closed) > ALPHA
    empirical = histogram(out, vocab).double() / n
    assert 0.5 * (empirical - p_row.double()).abs().sum() <= delta + tv_bound(vocab, n)


@pytest.mark.select(not_triton)
def test_gsd_single_candidate_follows_closed_form(kernel_backend):
    """One-hot q: out(x) = P_G and out(y) = p(y) (1 - P_G) / (1 - p(x)) for y != x."""
    vocab, n, x = 10, 200_000, 2
    p_row = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(5)) * 0.5, -1)
    out = _single_candidate_output({"method": "gsd"}, p_row, x, n, 13, kernel_backend)
    group_p, _ = reference.gsd_group_mass(p_row[None], None, torch.tensor([x]))
    closed = p_row.double() * (1 - group_p.double()) / (1 - p_row[x].double())
    closed[x] = group_p.double()
    assert group_p.item() > p_row[x].item() + 0.05
    assert chi_square_pvalue(histogram(out, vocab), closed) > ALPHA


# ------------------------------------------------------------------ opcheck


@pytest.mark.interpreter(keep=lambda method, with_q: with_q == (method != "exact"))
@pytest.mark.parametrize("method", _methods.CHAIN_METHODS)
@pytest.mark.parametrize("with_q", [True, False])
def test_opcheck(kernel_backend, method, with_q):
    kw = method_kwargs(method, 23, embeddings=True)
    case = chain_case(batch=4, drafts=3, vocab=23, with_q=with_q)
    opcheck_public_call(sk.verify_chain, kernel_backend, **case, method=method, **kw)


# ------------------------------------------------------------------ backend-specific: Triton chunk loops


@pytest.mark.backends("triton")
@pytest.mark.parametrize("method", list(METHOD_KWARGS))
def test_triton_chunked(kernel_backend, small_blocks, method):
    """Vocabulary 37 in chunks of 8 and neighbour rows in chunks of 2."""
    for with_q in (True, False):
        case = chain_case(batch=6, drafts=4, vocab=37, with_q=with_q, seed=11 + with_q)
        check_parity(sk.verify_chain, kernel_backend, **case, method=_method(method), **METHOD_KWARGS[method](CB[37]))


@pytest.mark.backends("triton")
@pytest.mark.parametrize("vocab", [9, 17])
def test_triton_vocab_one_past_the_block(kernel_backend, small_blocks, vocab):
    case = chain_case(batch=4, drafts=3, vocab=vocab, seed=vocab, zeros=0.0)
    check_parity(sk.verify_chain, kernel_backend, **case)
    check_parity(sk.verify_chain, kernel_backend, **{**case, "q": None}, method="gsd", rank_window=(2, 2))


# ------------------------------------------------------------------ backend-specific: CUDA streams and graphs


@pytest.mark.backends("cuda")
def test_cuda_side_stream(kernel_backend):
    case = chain_case(batch=8, drafts=5, vocab=500, seed=4)
    want = sk.verify_chain(**case, backend="reference")
    stream = torch.cuda.Stream()
    inputs = to_device(case, "cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = sk.verify_chain(**inputs, backend=kernel_backend)
    torch.cuda.current_stream().wait_stream(stream)
    assert_same(got, want)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("method", _methods.CHAIN_METHODS)
def test_cuda_graph_replay(kernel_backend, method):
    """Captured once with validate=False, replayed with rewritten uniforms (and drafts): every replay matches
    the reference on the new values, so nothing about the uniforms was baked in at capture."""
    vocab, batch, drafts = 2048, 8, 6
    kw_cpu = _large_kwargs(method, vocab, seed=0)
    kw = to_device(kw_cpu, "cuda")
    static = to_device(chain_case(batch=batch, drafts=drafts, vocab=vocab, seed=0, zeros=0.6), "cuda")

    def step():
        return sk.verify_chain(**static, method=method, backend=kernel_backend, validate=False, **kw)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for trial in range(4):
        fresh = chain_case(batch=batch, drafts=drafts, vocab=vocab, seed=100 + trial, zeros=0.6)
        for key in ("p", "q", "draft", "u_accept", "u_sample", "num_drafts"):
            static[key].copy_(fresh[key])
        graph.replay()
        torch.cuda.synchronize()
        assert_same(out, sk.verify_chain(**fresh, method=method, backend="reference", **kw_cpu))


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("verify_chain")
