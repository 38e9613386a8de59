"""gsd_group_mass on every backend: parity with the reference and GSD's bounds (x in its group, P_G >= p(x),
Q_G >= q(x)), ties and signed zeros, monotonicity in the window and thresholds, the partition case of GSD's
Theorem 1, opcheck."""

import pytest
import torch

import specdec_kernels as sk

from _backends import TRITON_INTERPRETED, check_parity, gpu_only
from _inputs import codebook, probs
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90


def _rows(n=64, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = probs(n, vocab, zeros=0.1, gen=gen, sharpness=1.0)
    return p, torch.randint(0, vocab, (n,), generator=gen)


@pytest.mark.interpreter(keep=False)
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("window", [(7, 6), (0, 0), (25, 25), (3, 60)])
@pytest.mark.parametrize("with_emb", [True, False])
def test_parity_and_bounds(kernel_backend, with_q, window, with_emb):
    p, x = _rows(seed=5)
    p[::4] = torch.round(p[::4] * 50) / 50  # ties in rank order
    q = probs(64, 50, gen=torch.Generator().manual_seed(6)) if with_q else None
    emb = torch.nn.functional.normalize(codebook(50, seed=5), dim=-1) if with_emb else None
    group_p, group_q = check_parity(sk.gsd_group_mass, kernel_backend, p, q, x, rank_window=window, embeddings=emb)
    assert (group_p >= p.gather(1, x[:, None]).squeeze(1) - 1e-7).all()
    if q is not None:
        assert (group_q >= q.gather(1, x[:, None]).squeeze(1) - 1e-7).all()
    else:
        assert (group_q == 1).all()


SETTINGS = [
    {},
    {"rank_window": (0, 0)},
    {"rank_window": (3, 1), "p_thr": 0.05},
    {"rank_window": (1, 5), "p_thr": 1.0},
    {"rank_window": (70, 70), "p_thr": 2.0},  # the whole vocabulary
    {"embeddings": "normalized", "d_thr": 0.8},
    {"embeddings": "raw", "d_thr": 4.0, "rank_window": (5, 5), "p_thr": 1.0},
]


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_parity_settings(kernel_backend, setting):
    """Every window shape and filter on sparse rows, with x at the most and at the least probable token (an empty
    side of the window)."""
    kw = dict(SETTINGS[setting])
    emb = kw.pop("embeddings", None)
    if emb is not None:
        cb = codebook(64, 4, seed=64)
        kw["embeddings"] = torch.nn.functional.normalize(cb, dim=-1) if emb == "normalized" else cb
    gen = torch.Generator().manual_seed(setting)
    p = probs(10, 64, sharpness=1.0, zeros=0.3, gen=gen)
    q = probs(10, 64, sharpness=1.0, gen=gen)
    x = torch.randint(0, 64, (10,), generator=gen)
    x[0] = p[0].argmax()  # the most probable token (empty "above" side)
    x[1] = p[1].argmin()  # the least probable (empty "below" side)
    check_parity(sk.gsd_group_mass, kernel_backend, p, q, x, **kw)
    check_parity(sk.gsd_group_mass, kernel_backend, p, None, x, **kw)


def test_ties_and_signed_zero(kernel_backend, small_blocks):
    """Equal probabilities rank by lower id; -0.0 ranks as 0.0; on Triton the window spans chunk boundaries."""
    p = torch.tensor([[0.25, 0.0, 0.25, 0.125, 0.125, 0.25, -0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    p = p.expand(12, 12).contiguous()
    for window in ((2, 2), (4, 1), (0, 6)):
        check_parity(sk.gsd_group_mass, kernel_backend, p, None, torch.arange(12), rank_window=window, p_thr=0.2)
        check_parity(sk.gsd_group_mass, kernel_backend, p, p.flip(-1).contiguous(), torch.arange(12),
                     rank_window=window, p_thr=1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_parity_half_precision(kernel_backend, dtype):
    gen = torch.Generator().manual_seed(4)
    p, q = probs(6, 50, gen=gen, dtype=dtype), probs(6, 50, gen=gen, dtype=dtype)
    check_parity(sk.gsd_group_mass, kernel_backend, p, q, torch.randint(0, 50, (6,), generator=gen), p_thr=0.2)


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [(7, 6), (0, 0), (0, 5), (5, 0), (25, 25), (300, 3), (20000, 20000)])
@pytest.mark.parametrize("with_q", [True, False])
def test_parity_codebook_size(kernel_backend, dtype, window, with_q):
    """64 rows over 8192 codes with ties in the rank order and half of the drafts at the argmax; windows up to
    wider than the vocabulary."""
    gen = torch.Generator().manual_seed(sum(window))
    rows, vocab = 64, 8192
    p = probs(rows, vocab, gen=gen, zeros=0.75)
    p[::3] = torch.round(p[::3] * 400) / 400
    p = (p / p.sum(-1, keepdim=True)).to(dtype)
    q = probs(rows, vocab, gen=gen, zeros=0.5).to(dtype) if with_q else None
    x = torch.randint(0, vocab, (rows,), generator=gen)
    x = torch.where(torch.rand(rows, generator=gen) < 0.5, p.float().argmax(-1), x)
    emb = torch.nn.functional.normalize(codebook(vocab, dim=8, seed=1), dim=-1)
    check_parity(sk.gsd_group_mass, kernel_backend, p, q, x, rank_window=window, embeddings=emb, p_thr=0.05,
                 d_thr=1.5)


def test_group_grows_with_window_and_thresholds():
    p, x = _rows(seed=8)
    emb = torch.nn.functional.normalize(codebook(50, seed=8), dim=-1)
    prev = None
    for window, p_thr, d_thr in [((0, 0), 0.0, 0.0), ((2, 2), 0.05, 0.3), ((7, 6), 0.15, 0.5), ((50, 50), 1.01, 4.01)]:
        gp, _ = sk.gsd_group_mass(p, None, x, embeddings=emb, rank_window=window, p_thr=p_thr, d_thr=d_thr)
        if prev is not None:
            assert (gp >= prev - 1e-7).all()
        prev = gp
    torch.testing.assert_close(prev, torch.ones_like(prev), atol=1e-6, rtol=0)  # the whole vocabulary


def test_partition_case_theorem_1():
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


@pytest.mark.interpreter(keep=lambda with_q: with_q)
@pytest.mark.parametrize("with_q", [True, False])
def test_opcheck(kernel_backend, with_q):
    cb = codebook(23)
    p, x = torch.softmax(torch.randn(5, 23), -1), torch.randint(0, 23, (5,))
    kw = {"embeddings": torch.nn.functional.normalize(cb, dim=-1), "rank_window": (2, 3), "p_thr": 0.1,
          "d_thr": 0.4} if with_q else {}
    opcheck_public_call(sk.gsd_group_mass, kernel_backend, p, p if with_q else None, x, **kw)


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("gsd_group_mass")
