"""lantern_relaxed_mass and gsd_group_mass: parity with the reference and their documented bounds."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _inputs import codebook, probs
from conftest import device_for


def _rows(n=64, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = probs(n, vocab, zeros=0.1, gen=gen, sharpness=1.0)
    return p, torch.randint(0, vocab, (n,), generator=gen)


@pytest.mark.parametrize("budget", [{"delta": 0.0}, {"delta": 0.05}, {"delta": 0.3}, {"delta": 1.0},
                                    {"lam": 1.0}, {"lam": 2.0}, {"lam": 50.0}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lantern_parity_and_bounds(backend, budget, dtype):
    device = device_for(backend)
    p, x = _rows()
    p = p.to(dtype)
    table = reference.neighbor_table(codebook(50), 12)
    got = sk.lantern_relaxed_mass(p.to(device), x.to(device), table.to(device), backend=backend, **budget)
    want = sk.lantern_relaxed_mass(p, x, table, backend="reference", **budget)
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0])
    p_tilde, merged = want
    p32 = p.float()
    px = p32.gather(1, x[:, None]).squeeze(1)
    moved = p_tilde - px  # = TV(p, p~_x)
    if "delta" in budget:
        assert (moved <= budget["delta"] + 1e-6).all()
    else:
        assert (p_tilde <= budget["lam"] * px + 1e-6).all()
    # maximal prefix: either all k merged or the next neighbour would exceed the budget
    for r in range(p.shape[0]):
        m = int(merged[r])
        if m < table.shape[1]:
            nxt = p32[r, table[x[r], m]]
            limit = budget.get("delta", (budget.get("lam", 1.0) - 1) * px[r])
            assert moved[r] + nxt > limit - 1e-7


def test_lantern_monotone_in_delta():
    p, x = _rows(seed=3)
    table = reference.neighbor_table(codebook(50, seed=3), 20)
    last_p, last_m = None, None
    for delta in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0):
        pt, m = sk.lantern_relaxed_mass(p, x, table, delta=delta)
        if last_p is not None:
            assert (pt >= last_p).all() and (m >= last_m).all()
        last_p, last_m = pt, m


@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("window", [(7, 6), (0, 0), (25, 25), (3, 60)])
@pytest.mark.parametrize("with_emb", [True, False])
def test_gsd_parity_and_bounds(backend, with_q, window, with_emb):
    device = device_for(backend)
    p, x = _rows(seed=5)
    p[::4] = torch.round(p[::4] * 50) / 50  # ties in rank order
    q = probs(64, 50, gen=torch.Generator().manual_seed(6)) if with_q else None
    emb = torch.nn.functional.normalize(codebook(50, seed=5), dim=-1) if with_emb else None
    kw = dict(rank_window=window, embeddings=emb)
    got = sk.gsd_group_mass(p.to(device), None if q is None else q.to(device), x.to(device), backend=backend,
                            **{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    want = sk.gsd_group_mass(p, q, x, backend="reference", **kw)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    px = p.gather(1, x[:, None]).squeeze(1)
    assert (want[0] >= px - 1e-7).all()
    if q is not None:
        assert (want[1] >= q.gather(1, x[:, None]).squeeze(1) - 1e-7).all()
    else:
        assert (want[1] == 1).all()


def test_gsd_group_grows_with_window_and_thresholds():
    p, x = _rows(seed=8)
    emb = torch.nn.functional.normalize(codebook(50, seed=8), dim=-1)
    prev = None
    for window, p_thr, d_thr in [((0, 0), 0.0, 0.0), ((2, 2), 0.05, 0.3), ((7, 6), 0.15, 0.5), ((50, 50), 1.01, 4.01)]:
        gp, _ = sk.gsd_group_mass(p, None, x, embeddings=emb, rank_window=window, p_thr=p_thr, d_thr=d_thr)
        if prev is not None:
            assert (gp >= prev - 1e-7).all()
        prev = gp
    torch.testing.assert_close(prev, torch.ones_like(prev), atol=1e-6, rtol=0)  # the whole vocabulary


def test_gsd_partition_case_theorem_1():
    """Identical embeddings within clusters, orthogonal across, a window covering V and p_thr > 1: G(x) is x's
    cluster, and the expected acceptance sum_x q(x) min(1, P_G / Q_G) >= 1 - TV(p, q) (GSD Theorem 1)."""
    vocab, clusters = 12, 4
    cluster_of = torch.arange(vocab) % clusters
    emb = torch.nn.functional.one_hot(cluster_of, clusters).float()
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        p = probs(1, vocab, gen=gen).squeeze(0)
        q = probs(1, vocab, gen=gen).squeeze(0)
        x = torch.arange(vocab)
        gp, gq = sk.gsd_group_mass(p.expand(vocab, vocab).contiguous(), q.expand(vocab, vocab).contiguous(), x,
                                   embeddings=emb, rank_window=(vocab, vocab), p_thr=1.5, d_thr=0.5)
        expected_gp = torch.zeros(clusters).index_add_(0, cluster_of, p)[cluster_of]
        torch.testing.assert_close(gp, expected_gp)
        accept = (q * torch.clamp(gp / gq, max=1.0)).sum()
        assert accept >= 1 - 0.5 * (p - q).abs().sum() - 1e-6
