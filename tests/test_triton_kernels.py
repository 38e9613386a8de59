"""Triton kernels: parity with the reference through the public API (``backend="triton"``).

On CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest), so sizes stay small:
V <= 256, few rows, short neighbour rows. ``small_blocks`` shrinks the kernels' chunk widths so that the chunk
loops (vocabulary and neighbour rows longer than one block) run on those small sizes too. Integer outputs must
match the reference exactly; float outputs use the tolerances below. Set ``SPECDEC_TEST_DEVICE=cuda`` to run the
same tests compiled on a GPU.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

import specdec_kernels as sk  # noqa: E402
from specdec_kernels import reference  # noqa: E402
from specdec_kernels.reference.neighbor_table import neighbor_distances  # noqa: E402

from _inputs import chain_case, codebook, probs, random_parents, tree_case  # noqa: E402

if "triton" not in sk.available_backends():
    pytest.skip("the triton backend is not usable here (no GPU and TRITON_INTERPRET unset)", allow_module_level=True)

DEVICE = "cuda" if os.environ.get("SPECDEC_TEST_DEVICE", "cpu") == "cuda" else "cpu"
TRITON = "triton"


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunk widths of 8 (vocabulary) and 2 (neighbour rows): every row below spans several chunks."""
    from specdec_kernels.triton import _common

    monkeypatch.setattr(_common, "MAX_VOCAB_BLOCK", 8)
    monkeypatch.setattr(_common, "MAX_NEIGHBOR_BLOCK", 2)


def _dev(value):
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE)
    if isinstance(value, dict):
        return {k: _dev(v) for k, v in value.items()}
    return value


def _same(got, want):
    """Exact equality of every output (moved to CPU)."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        assert torch.equal(g.cpu(), w.cpu()), f"\ntriton:    {g.cpu().tolist()}\nreference: {w.cpu().tolist()}"


def _chain(case, **kw):
    """(triton, reference) outputs of verify_chain on the same inputs."""
    return sk.verify_chain(**_dev(case), **_dev(kw), backend=TRITON), sk.verify_chain(**case, **kw, backend="reference")


def _tree(case, **kw):
    return sk.verify_tree(**_dev(case), **_dev(kw), backend=TRITON), sk.verify_tree(**case, **kw, backend="reference")


def _t(x, dtype=torch.float32):
    return None if x is None else torch.tensor(x, dtype=dtype)


# ================================================================== verify_chain

CB = {n: codebook(n, 4, seed=n) for n in (17, 37, 64, 200)}


def _one_chain(p, q, draft, ua, us, **kw):
    case = dict(p=_t(p), q=_t(q), draft=_t(draft, torch.int64), u_accept=_t(ua), u_sample=_t(us))
    got, want = _chain(case, **kw)
    _same(got, want)
    return [v.tolist() for v in got]


class TestChainNamedCases:
    """Hand-computed outcomes (the same cases as the reference's own tests), run through the Triton kernel."""

    def test_all_accepted_bonus(self):
        p = [[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
        assert _one_chain(p, None, [[1, 2]], [[0.99, 0.99]], [0.5]) == [[2], [0]]

    def test_first_rejected_residual(self):
        p, q = [[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], [[[0.0, 1.0, 0.0]]]
        assert _one_chain(p, q, [[1]], [[0.7]], [0.99]) == [[0], [0]]

    def test_one_hot_q_removes_draft(self):
        assert _one_chain([[[0.2, 0.8], [1.0, 0.0]]], None, [[0]], [[0.5]], [0.0]) == [[0], [1]]

    def test_zero_residual_falls_back_to_p(self):
        assert _one_chain([[[0.3, 0.7], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.99999]], [0.1])[0] == [1]
        # q >= p everywhere (an unnormalised p): x = 1 is rejected and max(0, p - q) is zero, so the token comes
        # from p = (0.3, 0.2) itself
        assert _one_chain([[[0.3, 0.2], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.5]], [0.2]) == [[0], [0]]
        assert _one_chain([[[0.3, 0.2], [1.0, 0.0]]], [[[0.3, 0.7]]], [[1]], [[0.5]], [0.7]) == [[0], [1]]

    def test_zero_drafts_is_plain_sampling(self):
        p = [[[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]]
        assert _one_chain(p, None, [[0]], [[0.0]], [0.6], num_drafts=torch.tensor([0])) == [[0], [2]]

    def test_vocab_one(self):
        assert _one_chain([[[1.0], [1.0], [1.0]]], None, [[0, 0]], [[0.9, 0.3]], [0.7]) == [[2], [0]]
        # with V = 1, q = 1 as well: u * 1 < 1 always passes
        assert _one_chain([[[1.0], [1.0]]], [[[1.0]]], [[0]], [[0.999]], [0.3]) == [[1], [0]]

    def test_q_zero_at_draft_accepts_iff_p_positive(self):
        assert _one_chain([[[0.5, 0.5], [1.0, 0.0]]], [[[1.0, 0.0]]], [[1]], [[0.999]], [0.5])[0] == [1]
        assert _one_chain([[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 1.0]]], [[1]], [[0.0]], [0.5])[0] == [0]

    def test_inverse_cdf_ties_and_zero_weights(self):
        p = [[[0.0, 0.5, 0.0, 0.5]]]
        assert _one_chain(p, None, [[]], [[]], [0.5])[1] == [3]  # u * W sits on a boundary: strictly above
        assert _one_chain(p, None, [[]], [[]], [0.0])[1] == [1]  # never a zero-weight token

    def test_no_draft_slots(self):
        case = chain_case(batch=4, drafts=0, vocab=9, seed=1)
        got, want = _chain(case)
        _same(got, want)
        assert got[0].tolist() == [0] * 4

    def test_unused_drafts_are_never_read(self):
        """Draft ids past num_drafts[b] are ignored: -1 padding there gives the outputs of valid padding. (The
        reference itself gathers every draft id, so it is run with valid padding.)"""
        case = chain_case(batch=6, drafts=3, vocab=17, seed=2)
        case["num_drafts"] = torch.tensor([0, 0, 1, 3, 2, 0])
        padded = case["draft"].masked_fill(torch.arange(3) >= case["num_drafts"][:, None], -1)
        for method, kw in (("exact", {}), ("gsd", {}), ("lantern", {"neighbors": reference.neighbor_table(CB[17], 3),
                                                                    "delta": 0.2})):
            want = sk.verify_chain(**case, method=method, **kw, backend="reference")
            _same(sk.verify_chain(**_dev({**case, "draft": padded}), method=method, **_dev(kw), backend=TRITON), want)

    def test_lantern_moves_merged_mass_onto_x(self):
        """Rejected x = 0 with neighbours 1, 2 merged (c = 0.25, 0.375 <= delta): the residual is p without
        x and A, i.e. only token 3; exact dyadic sums, so the boundary is hit exactly in any order."""
        p = [[[0.5, 0.25, 0.125, 0.125], [1.0, 0.0, 0.0, 0.0]]]
        nb = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=torch.int32)
        a, t = _one_chain(p, None, [[0]], [[0.9]], [0.0], method="lantern", neighbors=nb, delta=0.375)
        assert a == [0] and t == [3]  # p~ = 0.875 < 0.9: rejected
        a, t = _one_chain(p, None, [[0]], [[0.875]], [0.0], method="lantern", neighbors=nb, delta=0.375)
        assert a == [1]  # u * 1 <= p~ (equality accepts)

    def test_lantern_with_q_residual(self):
        p = [[[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]]]
        q = [[[0.0, 0.5, 0.25, 0.25]]]
        nb = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], dtype=torch.int32)
        for us in (0.0, 0.3, 0.9):  # x = 1 rejected; A's mass moved onto x before subtracting q
            _one_chain(p, q, [[1]], [[0.99]], [us], method="lantern", neighbors=nb, lam=1.5)
            _one_chain(p, q, [[1]], [[0.99]], [us], method="lantern", neighbors=nb, delta=0.5)

    def test_gsd_group_rescues_a_draft(self):
        # x = 1 has p 0.3; its group {0, 1, 2} has mass 0.9: u = 0.5 fails exact and passes gsd
        p = [[[0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 0.0, 1.0]]]
        assert _one_chain(p, None, [[1]], [[0.5]], [0.5])[0] == [0]
        assert _one_chain(p, None, [[1]], [[0.5]], [0.5], method="gsd", rank_window=(1, 1), p_thr=0.05) == [[1], [3]]


CHAIN_METHODS = {
    "exact": lambda v: {},
    "gsd": lambda v: {},
    "gsd_emb": lambda v: {"embeddings": torch.nn.functional.normalize(CB[v], dim=-1), "rank_window": (4, 3),
                          "p_thr": 0.3, "d_thr": 1.0},
    "lantern_delta": lambda v: {"neighbors": reference.neighbor_table(CB[v], 6), "delta": 0.2},
    "lantern_lam": lambda v: {"neighbors": reference.neighbor_table(CB[v], 6), "lam": 3.0},
}


@pytest.mark.parametrize("method", list(CHAIN_METHODS))
@pytest.mark.parametrize("with_q", [True, False])
def test_chain_parity_random(method, with_q):
    case = chain_case(batch=8, drafts=5, vocab=37, with_q=with_q, seed=len(method) + with_q)
    _same(*_chain(case, method=method.split("_")[0], **CHAIN_METHODS[method](37)))


@pytest.mark.parametrize("method", list(CHAIN_METHODS))
def test_chain_parity_chunked(small_blocks, method):
    """Vocabulary 37 in chunks of 8 and neighbour rows in chunks of 2."""
    for with_q in (True, False):
        case = chain_case(batch=6, drafts=4, vocab=37, with_q=with_q, seed=11 + with_q)
        _same(*_chain(case, method=method.split("_")[0], **CHAIN_METHODS[method](37)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["exact", "gsd_emb", "lantern_delta"])
def test_chain_parity_half_precision(dtype, method):
    case = chain_case(batch=6, drafts=4, vocab=64, seed=5, dtype=dtype)
    _same(*_chain(case, method=method.split("_")[0], **CHAIN_METHODS[method](64)))


@pytest.mark.parametrize("vocab", [1, 2, 9, 200])
def test_chain_parity_vocab_sizes(vocab):
    case = chain_case(batch=4, drafts=3, vocab=vocab, seed=vocab, zeros=0.0)
    _same(*_chain(case))
    _same(*_chain({**case, "q": None}))


@pytest.mark.parametrize("vocab", [9, 17])
def test_chain_vocab_one_past_the_block(small_blocks, vocab):
    case = chain_case(batch=4, drafts=3, vocab=vocab, seed=vocab, zeros=0.0)
    _same(*_chain(case))
    _same(*_chain({**case, "q": None}, method="gsd", rank_window=(2, 2)))


def test_chain_batch_invariance():
    """A row's outputs equal those of running it alone with the same uniforms."""
    case = chain_case(batch=6, drafts=4, vocab=21, seed=3)
    batched = sk.verify_chain(**_dev(case), backend=TRITON)
    for b in range(6):
        alone = sk.verify_chain(**_dev({k: (None if v is None else v[b : b + 1]) for k, v in case.items()}),
                                backend=TRITON)
        assert alone[0].item() == batched[0][b].item() and alone[1].item() == batched[1][b].item()


@pytest.mark.skipif(DEVICE != "cuda", reason="real codebook sizes: too slow for the interpreter")
@pytest.mark.parametrize("vocab", [4097, 8192, 16384])
def test_real_vocab_sizes_on_gpu(vocab):
    """Chain (every method) and tree parity at image-codebook vocabularies, several vocabulary chunks per row."""
    cb = codebook(vocab, 8, seed=1)
    offsets = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(vocab))[:16] + 1
    nb = ((torch.arange(vocab)[:, None] + offsets[None, :]) % vocab).to(torch.int32)  # distinct, never self
    emb = torch.nn.functional.normalize(cb, dim=-1)
    for with_q in (True, False):
        case = chain_case(batch=8, drafts=7, vocab=vocab, with_q=with_q, seed=vocab + with_q, zeros=0.5)
        _same(*_chain(case))
        _same(*_chain(case, method="gsd", embeddings=emb, rank_window=(25, 25)))
        _same(*_chain(case, method="lantern", neighbors=nb, delta=0.1))
        tree = tree_case(batch=4, nodes=16, vocab=vocab, with_q=with_q, seed=vocab)
        _same(*_tree(tree))
        _same(*_tree(tree, method="lantern", neighbors=nb, lam=3.0))
    _table(cb[:4096], 32)


def test_chain_lantern_rejections_with_merged_neighbours():
    """Many rejections at positions where neighbours were merged (large budgets, u close to 1)."""
    gen = torch.Generator().manual_seed(21)
    p = probs(8, 4, 37, sharpness=0.5, gen=gen)
    draft = torch.randint(0, 37, (8, 3), generator=gen)
    nb = reference.neighbor_table(CB[37], 8)
    for q in (None, probs(8, 3, 37, sharpness=0.5, gen=gen)):
        for kw in ({"delta": 0.1}, {"delta": 0.3}, {"lam": 4.0}):
            case = dict(p=p, q=q, draft=draft, u_accept=0.9 + 0.1 * torch.rand(8, 3, generator=gen),
                        u_sample=torch.rand(8, generator=gen))
            _, merged = reference.lantern_relaxed_mass(p[:, 0], draft[:, 0], nb, **kw)
            assert (merged > 0).any()
            _same(*_chain(case, method="lantern", neighbors=nb, **kw))


def test_chain_degenerate_relaxations_equal_exact():
    """delta = 0, lam = 1 and a (0, 0) GSD window reproduce "exact" token for token (ALGORITHMS.md 3.3, 3.4)."""
    case = chain_case(batch=8, drafts=5, vocab=37, seed=3)
    nb = reference.neighbor_table(CB[37], 4)
    exact = sk.verify_chain(**_dev(case), backend=TRITON)
    for kw in ({"method": "lantern", "neighbors": nb, "delta": 0.0}, {"method": "lantern", "neighbors": nb, "lam": 1.0},
               {"method": "gsd", "rank_window": (0, 0)}, {"method": "gsd", "p_thr": 0.0}):
        _same(sk.verify_chain(**_dev(case), **_dev(kw), backend=TRITON), exact)


def test_chain_gsd_ties_and_wide_window():
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
        _same(*_chain(case, method="gsd", **kw))
        _same(*_chain({**case, "q": None}, method="gsd", **kw))


# ================================================================== gsd_group_mass / lantern_relaxed_mass


def _gsd(p, q, x, **kw):
    got = sk.gsd_group_mass(_dev(p), _dev(q), _dev(x), **_dev(kw), backend=TRITON)
    want = sk.gsd_group_mass(p, q, x, **kw, backend="reference")
    _same(got, want)


GSD_SETTINGS = [
    {},
    {"rank_window": (0, 0)},
    {"rank_window": (3, 1), "p_thr": 0.05},
    {"rank_window": (1, 5), "p_thr": 1.0},
    {"rank_window": (70, 70), "p_thr": 2.0},  # the whole vocabulary
    {"embeddings": "normalized", "d_thr": 0.8},
    {"embeddings": "raw", "d_thr": 4.0, "rank_window": (5, 5), "p_thr": 1.0},
]


@pytest.mark.parametrize("setting", range(len(GSD_SETTINGS)))
def test_gsd_group_mass_parity(setting):
    kw = dict(GSD_SETTINGS[setting])
    emb = kw.pop("embeddings", None)
    if emb is not None:
        kw["embeddings"] = torch.nn.functional.normalize(CB[64], dim=-1) if emb == "normalized" else CB[64]
    gen = torch.Generator().manual_seed(setting)
    p = probs(10, 64, sharpness=1.0, zeros=0.3, gen=gen)
    q = probs(10, 64, sharpness=1.0, gen=gen)
    x = torch.randint(0, 64, (10,), generator=gen)
    x[0] = p[0].argmax()  # the most probable token (empty "above" side)
    x[1] = p[1].argmin()  # the least probable (empty "below" side)
    _gsd(p, q, x, **kw)
    _gsd(p, None, x, **kw)


def test_gsd_group_mass_ties_and_signed_zero(small_blocks):
    """Equal probabilities rank by lower id; -0.0 ranks as 0.0; the window spans chunk boundaries."""
    p = torch.tensor([[0.25, 0.0, 0.25, 0.125, 0.125, 0.25, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    p = p.expand(12, 12).contiguous()
    for window in ((2, 2), (4, 1), (0, 6)):
        _gsd(p, None, torch.arange(12), rank_window=window, p_thr=0.2)
        _gsd(p, p.flip(-1).contiguous(), torch.arange(12), rank_window=window, p_thr=1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gsd_group_mass_half_precision(dtype):
    gen = torch.Generator().manual_seed(4)
    p, q = probs(6, 50, gen=gen, dtype=dtype), probs(6, 50, gen=gen, dtype=dtype)
    _gsd(p, q, torch.randint(0, 50, (6,), generator=gen), p_thr=0.2)


def _lantern(p, x, nb, **kw):
    got = sk.lantern_relaxed_mass(_dev(p), _dev(x), _dev(nb), **kw, backend=TRITON)
    want = sk.lantern_relaxed_mass(p, x, nb, **kw, backend="reference")
    _same(got, want)
    return want


@pytest.mark.parametrize("budget", [{"delta": 0.0}, {"delta": 0.05}, {"delta": 0.4}, {"delta": 1.0},
                                    {"lam": 1.0}, {"lam": 1.7}, {"lam": 40.0}])
def test_lantern_relaxed_mass_parity(budget):
    gen = torch.Generator().manual_seed(1)
    p = probs(12, 64, sharpness=1.0, zeros=0.3, gen=gen)  # zero-mass neighbours are merged for free
    nb = reference.neighbor_table(CB[64], 12)
    _lantern(p, torch.randint(0, 64, (12,), generator=gen), nb, **budget)


def test_lantern_relaxed_mass_chunked_and_exact_boundaries(small_blocks):
    p = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0]]).expand(4, 6).contiguous()
    nb = torch.tensor([[1, 2, 3, 4, 5], [5, 2, 3, 0, 4], [3, 4, 5, 1, 0], [0, 1, 2, 4, 5],
                       [0, 1, 2, 3, 5], [4, 3, 2, 1, 0]], dtype=torch.int32)
    x = torch.tensor([0, 1, 2, 5])
    _, merged = _lantern(p, x, nb, delta=0.375)  # dyadic sums: c_m = 0.375 is hit exactly and included
    assert merged.tolist() == [2, 3, 4, 3]
    _, merged = _lantern(p, x, nb, delta=1.0)
    assert merged.tolist() == [5, 5, 5, 5]  # zero-mass neighbours are merged too; x = 5 reaches c_5 = 1.0
    _lantern(p, x, nb, lam=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lantern_relaxed_mass_half_precision(dtype):
    gen = torch.Generator().manual_seed(2)
    p = probs(8, 64, gen=gen, dtype=dtype)
    _lantern(p, torch.randint(0, 64, (8,), generator=gen), reference.neighbor_table(CB[64], 5), delta=0.1)


# ================================================================== neighbor_table


def _table(cb, k, normalize=True):
    got = sk.neighbor_table(_dev(cb), k, normalize=normalize, backend=TRITON).cpu()
    want = sk.neighbor_table(cb, k, normalize=normalize, backend="reference")
    assert got.dtype == torch.int32 and got.shape == want.shape
    diff = got != want
    if diff.any():  # only at near-ties (float32 summation order): the distances must then agree
        dg, dw = neighbor_distances(cb, got, normalize=normalize), neighbor_distances(cb, want, normalize=normalize)
        assert torch.allclose(dg[diff], dw[diff], rtol=1e-5, atol=1e-6), (got, want)
    return got, want


@pytest.mark.parametrize("n,dim,k,normalize", [(37, 4, 5, True), (37, 4, 5, False), (48, 8, 1, True),
                                               (20, 3, 19, True), (33, 2, 9, False)])
def test_neighbor_table_parity(n, dim, k, normalize):
    got, want = _table(codebook(n, dim, seed=n + k), k, normalize)
    assert torch.equal(got, want)  # random codebooks have no near-ties at these sizes


def test_neighbor_table_exact_ties_go_to_lower_id():
    # integer lattice (exact distances) with duplicated codes: equal distances everywhere
    lattice = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0],
                            [1.0, 1.0], [0.0, 2.0], [2.0, 2.0]])
    for normalize, k in ((False, 9), (False, 4), (True, 6)):
        got, want = _table(lattice + (0.0 if not normalize else 1.0), k, normalize)
        assert torch.equal(got, want)


# ================================================================== build_tree


def _build(parents, num_nodes=None):
    got = sk.build_tree(_dev(parents), _dev(num_nodes), backend=TRITON)
    want = sk.build_tree(parents, num_nodes, backend="reference")
    _same(got, want)
    return got


@pytest.mark.parametrize("seed", range(3))
def test_build_tree_parity_random(seed):
    parents, num_nodes = random_parents(batch=4, nodes=11, seed=seed)
    _build(parents, num_nodes)
    _build(parents, torch.full((4,), 11, dtype=torch.int64))


def test_build_tree_shapes():
    chain = torch.tensor([[-1, 0, 1, 2, 3, 4]])  # one path of depth 5
    star = torch.tensor([[-1, 0, 0, 0, 0, 0]])  # five leaves of depth 1
    _build(torch.cat([chain, star]))
    _build(torch.cat([chain, star]), torch.tensor([1, 6]))  # a root-only tree next to the star
    _build(torch.tensor([[-1]]))
    _, pos, paths = _build(torch.tensor([[-1, 0, 0, 1]]))
    assert pos.tolist() == [[0, 1, 1, 2]] and paths.tolist() == [[[0, 2, -1], [0, 1, 3]]]


# ================================================================== verify_tree

TREE_METHODS = {
    "exact": lambda v: {},
    "lantern_delta": lambda v: {"neighbors": reference.neighbor_table(codebook(v, 4, seed=v), 5), "delta": 0.3},
    "lantern_lam": lambda v: {"neighbors": reference.neighbor_table(codebook(v, 4, seed=v), 5), "lam": 4.0},
}


@pytest.mark.parametrize("method", list(TREE_METHODS))
@pytest.mark.parametrize("with_q", [True, False])
def test_tree_parity_random(method, with_q):
    for seed in range(2):
        case = tree_case(batch=4, nodes=9, vocab=30, with_q=with_q, seed=seed + 3 * with_q)
        _same(*_tree(case, method=method.split("_")[0], **TREE_METHODS[method](30)))


@pytest.mark.parametrize("method", list(TREE_METHODS))
def test_tree_parity_chunked(small_blocks, method):
    for with_q in (True, False):
        case = tree_case(batch=3, nodes=8, vocab=30, with_q=with_q, seed=7 + with_q)
        _same(*_tree(case, method=method.split("_")[0], **TREE_METHODS[method](30)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tree_parity_half_precision(dtype):
    case = tree_case(batch=3, nodes=9, vocab=30, seed=2, dtype=dtype)
    _same(*_tree(case))
    _same(*_tree(case, method="lantern", **TREE_METHODS["lantern_delta"](30)))


def test_tree_many_rejections_and_duplicate_siblings():
    """A wide root with repeated sibling tokens and u close to 1: most siblings are tried and rejected, so the
    residual is rewritten repeatedly (and with q, renormalised without the tried tokens)."""
    gen = torch.Generator().manual_seed(5)
    batch, nodes, vocab = 4, 10, 16
    parents = torch.tensor([-1, 0, 0, 0, 0, 0, 0, 1, 1, 2]).expand(batch, nodes).contiguous()
    tokens = torch.randint(0, 4, (batch, nodes), generator=gen)  # few distinct tokens: many duplicates
    for q in (None, probs(batch, nodes, vocab, gen=gen)):
        case = dict(p=probs(batch, nodes, vocab, sharpness=0.5, gen=gen), q=q, tree_tokens=tokens, parents=parents,
                    u_accept=0.7 + 0.3 * torch.rand(batch, nodes, generator=gen),
                    u_sample=torch.rand(batch, generator=gen))
        _same(*_tree(case))
        _same(*_tree(case, method="lantern", neighbors=reference.neighbor_table(codebook(vocab, 3), 3), delta=0.2))


def test_tree_named_cases():
    # root with children 1 (token 1) and 2 (token 0); node 1 accepted (u * 1 < 1.0), bonus from p[1] = one-hot 0
    p = _t([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])
    case = dict(p=p, q=None, tree_tokens=_t([[0, 1, 0]], torch.int64), parents=_t([[-1, 0, 0]], torch.int64),
                u_accept=torch.zeros(1, 3), u_sample=_t([0.9]))
    got, want = _tree(case)
    _same(got, want)
    assert [v.tolist() for v in got] == [[[1, -1]], [1], [0]]
    # root only: bonus from p[0]; M = 1 gives an empty accepted_nodes
    root = dict(p=_t([[[0.25, 0.75]]]), q=None, tree_tokens=_t([[0]], torch.int64), parents=_t([[-1]], torch.int64),
                u_accept=torch.zeros(1, 1), u_sample=_t([0.5]))
    got, want = _tree(root)
    _same(got, want)
    assert got[0].shape == (1, 0) and got[2].tolist() == [1]
    # every child rejected and the residual empties: fall back to p[cur]
    p = _t([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    case = dict(p=p, q=None, tree_tokens=_t([[0, 1, 1]], torch.int64), parents=_t([[-1, 0, 0]], torch.int64),
                u_accept=_t([[0.0, 0.9999, 0.0]]), u_sample=_t([0.3]))
    _same(*_tree(case))


def test_tree_padding_is_never_read():
    """Tokens, parents and p rows of padding nodes (n >= num_nodes[b]) may hold anything."""
    case = tree_case(batch=4, nodes=9, vocab=20, seed=4)
    pad = torch.arange(9) >= case["num_nodes"][:, None]
    garbage = {**case, "tree_tokens": case["tree_tokens"].masked_fill(pad, -1),
               "parents": case["parents"].masked_fill(pad, 99), "p": case["p"].masked_fill(pad[..., None], 0.0)}
    want = sk.verify_tree(**case, backend="reference")
    _same(sk.verify_tree(**_dev(garbage), backend=TRITON), want)
    _same(sk.build_tree(_dev(garbage["parents"]), _dev(case["num_nodes"]), backend=TRITON),
          sk.build_tree(case["parents"], case["num_nodes"], backend="reference"))


def test_tree_ragged_batch_invariance():
    case = tree_case(batch=5, nodes=9, vocab=20, seed=9)
    batched = sk.verify_tree(**_dev(case), backend=TRITON)
    for b in range(5):
        row = {k: (None if v is None else v[b : b + 1]) for k, v in case.items()}  # includes num_nodes
        alone = sk.verify_tree(**_dev(row), backend=TRITON)
        for a, full in zip(alone, batched):
            assert torch.equal(a[0].cpu(), full[b].cpu())


# ================================================================== cspd_verify


def _cspd_case(n=24, dim=3, tries=5, seed=0, c_one=False, spread=0.5):
    gen = torch.Generator().manual_seed(seed)
    mu_p = torch.randn(n, dim, generator=gen) * 0.5
    mu_q = mu_p + torch.randn(n, dim, generator=gen) * spread
    sigma_p, sigma_q = torch.rand(n, dim, generator=gen) + 0.5, torch.rand(n, dim, generator=gen) + 0.5
    return dict(x=mu_q + sigma_q * torch.randn(n, dim, generator=gen), mu_q=mu_q, sigma_q=sigma_q, mu_p=mu_p,
                sigma_p=sigma_p, s_q=torch.zeros(n, dim) if c_one else torch.randn(n, dim, generator=gen) * 0.1,
                s_p=torch.zeros(n, dim), u_accept=torch.rand(n, generator=gen),
                u_prop=torch.rand(n, tries, dim, generator=gen), u_ar=torch.rand(n, tries, generator=gen))


def _cspd(case, tau=1.0):
    got = sk.cspd_verify(**_dev(case), inner_temperature=tau, backend=TRITON)
    want = sk.cspd_verify(**case, inner_temperature=tau, backend="reference")
    _same(got[1:], want[1:])
    assert got[0].dtype == want[0].dtype
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-6, atol=1e-6)
    return want


@pytest.mark.parametrize("tau", [1.0, 42.0])
@pytest.mark.parametrize("c_one", [True, False])
def test_cspd_parity(tau, c_one):
    accepted = _cspd(_cspd_case(c_one=c_one, seed=int(tau)), tau)[1]
    assert accepted.any() and (~accepted).any()


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")  # the interpreter's numpy log(0)
def test_cspd_edge_uniforms_and_shapes():
    case = _cspd_case(n=16, dim=1, tries=1, seed=3, spread=2.0)
    case["u_prop"][:8] = 0.0  # clamped to 2^-24: far tail of Phi^-1
    case["u_prop"][8:] = 1.0 - 2.0**-24  # the largest float32 below 1
    case["u_accept"][:4] = 0.0  # log 0 = -inf: accepted
    _, accepted, fallback = _cspd(case)
    assert accepted[:4].all() and fallback.any()
    _cspd(_cspd_case(n=5, dim=17, tries=3, seed=4))  # a dimension past a power of two
    empty = _cspd_case(n=0, dim=3, tries=2)
    _cspd(empty)


# ================================================================== compile check for a GPU target

_COMPILE_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from specdec_kernels.triton import (build_tree, cspd_verify, gsd_group_mass, lantern_relaxed_mass,
                                        neighbor_table, verify_chain, verify_tree)
    P, I64, I32, F64 = "*fp32", "*i64", "*i32", "*fp64"
    chain = dict(p_ptr="*bf16", q_ptr="*bf16", draft_ptr=I64, u_accept_ptr=P, u_sample_ptr=P, num_drafts_ptr=I64,
                 nbr_ptr=I32, emb_ptr=P, scratch_ptr=F64, accept_len_ptr=I64, next_token_ptr=I64, L="i32", V="i32",
                 K="i32", D_EMB="i32", budget_bits="i64", h_lo="i32", h_hi="i32", p_thr="fp32", d_thr="fp32")
    tree = dict(p_ptr=P, q_ptr=P, tok_ptr=I64, par_ptr=I64, u_accept_ptr=P, u_sample_ptr=P, num_nodes_ptr=I64,
                nbr_ptr=I32, scratch_ptr=F64, marker_ptr=I32, accepted_ptr=I64, accept_len_ptr=I64,
                next_token_ptr=I64, M="i32", V="i32", K="i32", budget_bits="i64")
    cases = [(verify_chain._verify_chain_kernel, chain,
              dict(METHOD=m, HAS_Q=True, USE_LAMBDA=m == 2, HAS_EMB=m == 1, BLOCK_V=2048, BLOCK_K=128, BLOCK_L=16))
             for m in (0, 1, 2)]
    cases += [(verify_tree._verify_tree_kernel, tree,
               dict(METHOD=m, HAS_Q=m == 2, USE_LAMBDA=False, BLOCK_V=2048, BLOCK_K=128, BLOCK_M=64)) for m in (0, 2)]
    cases += [
        (build_tree._build_tree_kernel, dict(par_ptr=I64, num_nodes_ptr=I64, mask_ptr="*u8", depth_ptr=I64,
                                             paths_ptr=I64, stats_ptr=I64, M="i32"), dict(BLOCK_M=64)),
        (neighbor_table._normalize_kernel, dict(emb_ptr=P, out_ptr=P, N="i32", D="i32"), dict(BLOCK_R=256)),
        (neighbor_table._neighbor_table_kernel, dict(emb_ptr=P, out_ptr=I32, N="i32", D="i32", K="i32"),
         dict(BLOCK_I=2, BLOCK_K=1024)),
        (cspd_verify._cspd_verify_kernel, dict(x_ptr=P, mu_q_ptr=P, sigma_q_ptr=P, mu_p_ptr=P, sigma_p_ptr=P,
                                               s_q_ptr=P, s_p_ptr=P, u_accept_ptr=P, u_prop_ptr=P, u_ar_ptr=P,
                                               tokens_ptr=P, accepted_ptr="*u8", fallback_ptr="*u8", N="i32",
                                               D="i32", K="i32", tau_bits="i64"), dict(BLOCK_N=16, BLOCK_D=16)),
        (gsd_group_mass._gsd_group_mass_kernel, dict(p_ptr=P, q_ptr=P, x_ptr=I64, emb_ptr=P, group_p_ptr=P,
                                                     group_q_ptr=P, V="i32", D_EMB="i32", h_lo="i32", h_hi="i32",
                                                     p_thr="fp32", d_thr="fp32"),
         dict(HAS_Q=True, HAS_EMB=True, BLOCK_V=2048)),
        (lantern_relaxed_mass._lantern_relaxed_mass_kernel,
         dict(p_ptr="*fp16", x_ptr=I64, nbr_ptr=I32, p_tilde_ptr=P, merged_ptr=I32, V="i32", K="i32",
              budget_bits="i64"), dict(USE_LAMBDA=True, BLOCK_K=128)),
    ]
    for fn, sig, consts in cases:
        sig = {**sig, **{k: "constexpr" for k in consts}}
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"enable_fp_fusion": False, "num_warps": 8})
    print("compiled", len(cases))
""")


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU run compiles every kernel for real")
def test_kernels_compile_for_sm90():
    """Compile every kernel family to a cubin for sm_90 (no GPU needed: ptxas ships with Triton), outside the
    interpreter, so that GPU-only front-end, layout and ptxas errors show up on CPU machines too."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "compiled" in out.stdout
