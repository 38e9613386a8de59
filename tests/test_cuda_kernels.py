"""CUDA kernels: parity with the reference (computed on CPU copies) on random and edge inputs for every op,
at the real codebook sizes and across tile boundaries, plus CUDA-graph capture and replay of verify_chain.

Skipped unless a GPU is visible and the extension was built with its CUDA kernels. Integer outputs must
match exactly (the float64 sums may differ from the reference's only in summation order, ALGORITHMS.md 3.8);
neighbour tables are compared by distance at near-ties."""

import functools

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference
from specdec_kernels._backend import torch_op
from specdec_kernels.reference.neighbor_table import neighbor_distances

from _inputs import chain_case, codebook, probs, random_parents, tree_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or "cuda" not in sk.available_backends(),
        reason="needs a visible GPU and the CUDA kernels (extension built against CUDA torch with a toolkit)",
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TILE = 1024 * 4  # kChainBlock * kChainItems: vocabularies around it cross the inverse-CDF tile boundary


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _on(case: dict, device) -> dict:
    return {k: _to(v, device) for k, v in case.items()}


def _assert_same(got, want):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.device.type == "cuda"
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.cpu(), w.cpu()), f"mismatch at {(g.cpu() != w.cpu()).nonzero()[:8].tolist()}"


@functools.cache
def _table(vocab: int, k: int, seed: int) -> torch.Tensor:
    """A neighbour table: the reference's for small vocabularies; above that a cheap valid stand-in (k distinct
    non-self ids per row), since the relaxed-mass semantics do not depend on the geometry."""
    if vocab <= 4096:
        return reference.neighbor_table(codebook(vocab, dim=8, seed=seed), k)
    offsets = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(seed))[:k] + 1
    return ((torch.arange(vocab)[:, None] + offsets) % vocab).to(torch.int32)


def _chain_kwargs(method: str, vocab: int, seed: int) -> dict:
    if method == "gsd":
        emb = torch.nn.functional.normalize(codebook(vocab, dim=8, seed=seed), dim=-1)
        return {"embeddings": emb, "rank_window": (7, 6)}
    if method == "gsd_wide":
        return {"rank_window": (25, 25), "p_thr": 0.5}
    if method == "lantern":
        return {"neighbors": _table(vocab, min(vocab - 1, 64), seed), "delta": 0.2}
    if method == "lantern_lam":
        return {"neighbors": _table(vocab, min(vocab - 1, 200), seed), "lam": 5.0}
    return {}


def _check_chain(case: dict, method: str, **kw):
    name = method.split("_")[0]
    kw_cuda = {k: _to(v, "cuda") for k, v in kw.items()}
    got = sk.verify_chain(**_on(case, "cuda"), method=name, backend="cuda", **kw_cuda)
    want = sk.verify_chain(**_on(case, "cpu"), method=name, backend="reference", **kw)
    _assert_same(got, want)


# ------------------------------------------------------------------ verify_chain


@pytest.mark.parametrize("method", ["exact", "gsd", "gsd_wide", "lantern", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_verify_chain_random(method, with_q, dtype):
    case = chain_case(batch=24, drafts=7, vocab=997, with_q=with_q, seed=3, dtype=dtype, zeros=0.5)
    _check_chain(case, method, **_chain_kwargs(method, 997, seed=3))


@pytest.mark.parametrize("vocab", [1, 2, 33, TILE - 1, TILE, TILE + 1, 8192, 16384])
@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
def test_verify_chain_vocab_sizes(vocab, method):
    if method == "lantern" and vocab < 2:
        pytest.skip("a neighbour table needs two codes")
    # Top-k-like rows (most of the vocabulary at zero) as the image models produce them.
    case = chain_case(batch=6, drafts=15, vocab=vocab, seed=vocab, zeros=0.0 if vocab < 64 else 0.88)
    _check_chain(case, method, **_chain_kwargs(method, vocab, seed=1))


def test_verify_chain_long_accept_prefixes():
    """More drafts than warps in the LANTERN phase 1 (one warp per draft) and more than threads' first pass."""
    case = chain_case(batch=4, drafts=48, vocab=3000, seed=5, zeros=0.7)
    case["u_accept"] *= 0.02  # nearly everything passes
    for method in ("exact", "lantern"):
        _check_chain(case, method, **_chain_kwargs(method, 3000, seed=5))


def test_verify_chain_edge_cases():
    # zero drafts (plain AR sample), u = 0 (everything with p(x) > 0 passes), V = 1
    _check_chain(chain_case(batch=5, drafts=0, vocab=9), "exact")
    case = chain_case(batch=32, drafts=6, vocab=11, seed=2, with_q=False)
    case["u_accept"].zero_()
    _check_chain(case, "exact")
    ones = torch.ones(3, 3, 1)
    _check_chain(dict(p=ones, q=None, draft=torch.zeros(3, 2, dtype=torch.long), u_accept=torch.rand(3, 2),
                      u_sample=torch.rand(3), num_drafts=torch.tensor([0, 1, 2])), "exact")
    # p == q makes every residual vanish: the recovered token falls back to p
    case = chain_case(batch=16, drafts=3, vocab=13, seed=9)
    case["q"] = case["p"][:, :3].clone()
    case["u_accept"].fill_(0.99999)
    for method in ("exact", "gsd"):
        _check_chain(case, method)
    # one-hot targets: the recovered token is forced
    p = torch.nn.functional.one_hot(torch.randint(0, 50, (8, 4)), 50).float()
    _check_chain(dict(p=p, q=None, draft=torch.randint(0, 50, (8, 3)), u_accept=torch.rand(8, 3),
                      u_sample=torch.rand(8), num_drafts=torch.full((8,), 3)), "exact")


def test_verify_chain_on_a_side_stream():
    case = chain_case(batch=8, drafts=5, vocab=500, seed=4)
    want = sk.verify_chain(**case, backend="reference")
    stream = torch.cuda.Stream()
    inputs = _on(case, "cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = sk.verify_chain(**inputs, backend="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    _assert_same(got, want)


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
def test_verify_chain_cuda_graph_replay(method):
    """Captured once with validate=False, replayed with rewritten uniforms (and drafts): every replay matches
    the reference on the new values, so nothing about the uniforms was baked in at capture."""
    vocab, batch, drafts = 2048, 8, 6
    kw = {k: _to(v, "cuda") for k, v in _chain_kwargs(method, vocab, seed=0).items()}
    static = _on(chain_case(batch=batch, drafts=drafts, vocab=vocab, seed=0, zeros=0.6), "cuda")
    name = method.split("_")[0]

    def step():
        return sk.verify_chain(**static, method=name, backend="cuda", validate=False, **kw)

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
        want = sk.verify_chain(**fresh, method=name, backend="reference", **_chain_kwargs(method, vocab, seed=0))
        _assert_same(out, want)


# ------------------------------------------------------------------ verify_tree


@pytest.mark.parametrize("method", ["exact", "lantern", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_verify_tree_random(method, with_q, dtype):
    case = tree_case(batch=6, nodes=30, vocab=1500, with_q=with_q, seed=7, dtype=dtype)
    kw = {}
    if method.startswith("lantern"):
        kw["neighbors"] = _table(1500, 40, 7)
        kw["lam" if method.endswith("lam") else "delta"] = 4.0 if method.endswith("lam") else 0.1
    name = method.split("_")[0]
    got = sk.verify_tree(**_on(case, "cuda"), method=name, backend="cuda", **{k: _to(v, "cuda") for k, v in kw.items()})
    want = sk.verify_tree(**case, method=name, backend="reference", **kw)
    _assert_same(got, want)


@pytest.mark.parametrize("with_q", [True, False])
def test_verify_tree_edge_shapes(with_q):
    gen = torch.Generator().manual_seed(11)
    batch, nodes, vocab = 5, 12, TILE + 1
    # a star of siblings with repeated tokens, a deep chain and a root-only tree in one ragged batch
    parents = torch.zeros(batch, nodes, dtype=torch.long)
    parents[1] = torch.arange(-1, nodes - 1)
    parents[:, 0] = -1
    num_nodes = torch.tensor([nodes, nodes, 1, 7, nodes])
    tokens = torch.randint(0, 3, (batch, nodes), generator=gen)
    q = probs(batch, nodes, vocab, gen=gen) if with_q else None
    case = dict(p=probs(batch, nodes, vocab, gen=gen, zeros=0.9), q=q, tree_tokens=tokens, parents=parents,
                u_accept=torch.rand(batch, nodes, generator=gen), u_sample=torch.rand(batch, generator=gen),
                num_nodes=num_nodes)
    got = sk.verify_tree(**_on(case, "cuda"), backend="cuda")
    want = sk.verify_tree(**case, backend="reference")
    _assert_same(got, want)


# ------------------------------------------------------------------ relaxed masses


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 31, 32, 33, 1000])
@pytest.mark.parametrize("budget", [{"delta": 0.0}, {"delta": 0.1}, {"delta": 1.0}, {"lam": 1.0}, {"lam": 20.0}])
def test_lantern_relaxed_mass(dtype, k, budget):
    gen = torch.Generator().manual_seed(k)
    vocab = 2048
    p = probs(300, vocab, gen=gen, zeros=0.5, sharpness=1.0).to(dtype)
    x = torch.randint(0, vocab, (300,), generator=gen)
    table = _table(vocab, k, k)
    got = sk.lantern_relaxed_mass(p.cuda(), x.cuda(), table.cuda(), backend="cuda", **budget)
    want = sk.lantern_relaxed_mass(p, x, table, backend="reference", **budget)
    _assert_same(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [(7, 6), (0, 0), (0, 5), (5, 0), (25, 25), (300, 3), (20000, 20000)])
@pytest.mark.parametrize("with_q", [True, False])
def test_gsd_group_mass(dtype, window, with_q):
    gen = torch.Generator().manual_seed(sum(window))
    rows, vocab = 64, 8192
    p = probs(rows, vocab, gen=gen, zeros=0.75)
    p[::3] = torch.round(p[::3] * 400) / 400  # ties in the rank order
    p = (p / p.sum(-1, keepdim=True)).to(dtype)
    q = probs(rows, vocab, gen=gen, zeros=0.5).to(dtype) if with_q else None
    x = torch.randint(0, vocab, (rows,), generator=gen)
    x = torch.where(torch.rand(rows, generator=gen) < 0.5, p.float().argmax(-1), x)  # half inside the support
    emb = torch.nn.functional.normalize(codebook(vocab, dim=8, seed=1), dim=-1)
    kw = dict(rank_window=window, embeddings=emb, p_thr=0.05, d_thr=1.5)
    got = sk.gsd_group_mass(p.cuda(), None if q is None else q.cuda(), x.cuda(), backend="cuda",
                            **{k: _to(v, "cuda") for k, v in kw.items()})
    want = sk.gsd_group_mass(p, q, x, backend="reference", **kw)
    _assert_same(got, want)


# ------------------------------------------------------------------ neighbor_table


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n,dim,k", [(2, 3, 1), (300, 8, 299), (4096, 8, 1000), (2500, 16, 2400), (1200, 256, 50)])
def test_neighbor_table(normalize, n, dim, k):
    cb = codebook(n, dim, seed=n)
    got = sk.neighbor_table(cb.cuda(), k, normalize=normalize, backend="cuda").cpu()
    want = sk.neighbor_table(cb, k, normalize=normalize, backend="reference")
    assert got.dtype == torch.int32 and got.shape == (n, k)
    assert (got != torch.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in got.tolist())
    d_got = neighbor_distances(cb, got, normalize=normalize)
    torch.testing.assert_close(d_got, neighbor_distances(cb, want, normalize=normalize), atol=1e-5, rtol=1e-5)
    # Indices agree except where float32 rounding reorders near-ties.
    assert (got != want).float().mean() < 0.01


def test_neighbor_table_exact_ties():
    cb = torch.randint(-2, 3, (400, 2)).float()  # many exactly equal distances: ties go to the lower id
    got = sk.neighbor_table(cb.cuda(), 120, normalize=False, backend="cuda")
    _assert_same(got, sk.neighbor_table(cb, 120, normalize=False, backend="reference"))


# ------------------------------------------------------------------ build_tree


@pytest.mark.parametrize("nodes", [1, 2, 13, 64, 300])
@pytest.mark.parametrize("seed", range(3))
def test_build_tree(nodes, seed):
    parents, num_nodes = random_parents(batch=5, nodes=nodes, seed=seed)
    got = sk.build_tree(parents.cuda(), num_nodes.cuda(), backend="cuda")
    _assert_same(got, sk.build_tree(parents, num_nodes, backend="reference"))


def test_build_tree_deep_chain_and_empty_batch():
    chain = torch.arange(-1, 299).view(1, 300)
    _assert_same(sk.build_tree(chain.cuda(), backend="cuda"), sk.build_tree(chain, backend="reference"))
    empty = torch.empty(0, 4, dtype=torch.long)
    mask, pos, paths = torch_op("build_tree")(empty.cuda(), torch.empty(0, dtype=torch.long, device="cuda"))
    assert mask.shape == (0, 4, 4) and pos.shape == (0, 4) and paths.shape == (0, 0, 0)


@pytest.mark.parametrize("parents,num_nodes,match", [
    ([[0, 0, 1]], [3], "root"),
    ([[-1, 0, 2]], [3], "parent"),
    ([[-1, 0, 5]], [3], "parent"),
    ([[-1, 0, 1]], [4], "num_nodes"),
])
def test_build_tree_kernel_flags_malformed_trees(parents, num_nodes, match):
    """A direct op call (no Python validation) must raise from the kernel's error flag, not crash or print."""
    with pytest.raises(RuntimeError, match=match):
        torch_op("build_tree")(torch.tensor(parents, device="cuda"), torch.tensor(num_nodes, device="cuda"))


# ------------------------------------------------------------------ cspd_verify


@pytest.mark.parametrize("c_one", [True, False])
@pytest.mark.parametrize("tau", [1.0, 42.0])
@pytest.mark.parametrize("tries", [1, 100])
def test_cspd_verify(c_one, tau, tries):
    gen = torch.Generator().manual_seed(tries)
    n, dim = 2048, 16
    mu_p = torch.randn(n, dim, generator=gen) * 0.5
    mu_q = mu_p + torch.randn(n, dim, generator=gen) * 0.3
    sigma_p = torch.rand(n, dim, generator=gen) + 0.5
    sigma_q = torch.rand(n, dim, generator=gen) + 0.5
    case = dict(x=mu_q + sigma_q * torch.randn(n, dim, generator=gen), mu_q=mu_q, sigma_q=sigma_q, mu_p=mu_p,
                sigma_p=sigma_p, s_q=torch.zeros(n, dim) if c_one else torch.randn(n, dim, generator=gen) * 0.05,
                s_p=torch.zeros(n, dim), u_accept=torch.rand(n, generator=gen),
                u_prop=torch.rand(n, tries, dim, generator=gen), u_ar=torch.rand(n, tries, generator=gen))
    got = sk.cspd_verify(**_on(case, "cuda"), inner_temperature=tau, backend="cuda")
    want = sk.cspd_verify(**case, inner_temperature=tau, backend="reference")
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[2].cpu(), want[2])
    # CUDA's erfinv / log differ from torch's CPU ones by a few float64 ulps: float32 tokens agree to rounding.
    torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-5, rtol=1e-5)
