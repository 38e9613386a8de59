"""lantern_relaxed_mass on every backend: parity with the reference and the documented bounds (TV <= delta,
p~ <= lam p, maximal prefix), exact boundaries, monotonicity in delta, opcheck."""

import functools

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _backends import TRITON_INTERPRETED, check_parity, device_for, gpu_only, to_device
from _inputs import codebook, probs
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90

BUDGETS = [{"delta": 0.0}, {"delta": 0.05}, {"delta": 0.3}, {"delta": 1.0}, {"lam": 1.0}, {"lam": 2.0}, {"lam": 50.0}]


def _rows(n=64, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = probs(n, vocab, zeros=0.1, gen=gen, sharpness=1.0)
    return p, torch.randint(0, vocab, (n,), generator=gen)


@pytest.mark.interpreter(keep=lambda budget, dtype: dtype == torch.float32 or budget == {"delta": 0.05})
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_parity_and_bounds(kernel_backend, budget, dtype):
    p, x = _rows()
    p = p.to(dtype)
    table = reference.neighbor_table(codebook(50), 12)
    p_tilde, merged = check_parity(sk.lantern_relaxed_mass, kernel_backend, p, x, table, **budget)
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


def test_zero_mass_neighbours_and_exact_boundaries(backend, small_blocks):
    """Dyadic probabilities (exact sums in any order): c_m = delta is hit exactly and included; zero-mass neighbours
    are merged too. (On Triton the neighbour rows span several chunks of 2.)"""
    p = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0]]).expand(4, 6).contiguous()
    nb = torch.tensor([[1, 2, 3, 4, 5], [5, 2, 3, 0, 4], [3, 4, 5, 1, 0], [0, 1, 2, 4, 5],
                       [0, 1, 2, 3, 5], [4, 3, 2, 1, 0]], dtype=torch.int32)
    x = torch.tensor([0, 1, 2, 5])
    args = to_device((p, x, nb), device_for(backend))
    _, merged = sk.lantern_relaxed_mass(*args, delta=0.375, backend=backend)
    assert merged.tolist() == [2, 3, 4, 3]
    _, merged = sk.lantern_relaxed_mass(*args, delta=1.0, backend=backend)
    assert merged.tolist() == [5, 5, 5, 5]  # x = 5 reaches c_5 = 1.0
    p_tilde, _ = sk.lantern_relaxed_mass(*args, lam=2.0, backend=backend)
    assert p_tilde.tolist() == [1.0, 0.4375, 0.25, 0.0]  # beta = p(x); x = 5 has p(x) = 0: nothing merges


@pytest.mark.parametrize("budget", [{"delta": 0.0}, {"delta": 0.05}, {"delta": 0.4}, {"delta": 1.0},
                                    {"lam": 1.0}, {"lam": 1.7}, {"lam": 40.0}])
def test_parity_sparse_rows(kernel_backend, budget):
    """30 % of the probabilities are zero, so zero-mass neighbours are merged for free."""
    gen = torch.Generator().manual_seed(1)
    p = probs(12, 64, sharpness=1.0, zeros=0.3, gen=gen)
    nb = reference.neighbor_table(codebook(64, 4, seed=64), 12)
    check_parity(sk.lantern_relaxed_mass, kernel_backend, p, torch.randint(0, 64, (12,), generator=gen), nb, **budget)


@functools.cache
def _table(vocab: int, k: int) -> torch.Tensor:
    if vocab <= 4096:
        return reference.neighbor_table(codebook(vocab, dim=8, seed=k), k)
    offsets = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(k))[:k] + 1
    return ((torch.arange(vocab)[:, None] + offsets) % vocab).to(torch.int32)


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 1000])
@pytest.mark.parametrize("budget", [{"delta": 0.0}, {"delta": 0.1}, {"delta": 1.0}, {"lam": 1.0}, {"lam": 20.0}])
def test_parity_long_neighbour_rows(kernel_backend, dtype, k, budget):
    """300 rows over 2048 codes; neighbour rows around the warp width and up to 1000 long."""
    gen = torch.Generator().manual_seed(k)
    p = probs(300, 2048, gen=gen, zeros=0.5, sharpness=1.0).to(dtype)
    x = torch.randint(0, 2048, (300,), generator=gen)
    check_parity(sk.lantern_relaxed_mass, kernel_backend, p, x, _table(2048, k), **budget)


def test_monotone_in_delta():
    p, x = _rows(seed=3)
    table = reference.neighbor_table(codebook(50, seed=3), 20)
    last_p, last_m = None, None
    for delta in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0):
        pt, m = sk.lantern_relaxed_mass(p, x, table, delta=delta)
        if last_p is not None:
            assert (pt >= last_p).all() and (m >= last_m).all()
        last_p, last_m = pt, m


@pytest.mark.interpreter(keep=lambda budget: "delta" in budget)
@pytest.mark.parametrize("budget", [{"delta": 0.1}, {"lam": 3.0}])
def test_opcheck(kernel_backend, budget):
    cb = codebook(23)
    p, x = torch.softmax(torch.randn(5, 23), -1), torch.randint(0, 23, (5,))
    opcheck_public_call(sk.lantern_relaxed_mass, kernel_backend, p, x, reference.neighbor_table(cb, 4), **budget)


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("lantern_relaxed_mass")
