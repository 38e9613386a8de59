"""neighbor_table on every backend: brute-force parity (by distance, so near-ties cannot flake), properties, ties,
k bounds, opcheck."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels.reference.neighbor_table import neighbor_distances

from _backends import TRITON_INTERPRETED, device_for, on_gpu
from _inputs import codebook
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90

SMALL = [(2, 3, 1), (20, 3, 19), (33, 2, 9), (37, 4, 5), (37, 8, 5), (48, 8, 1)]
MEDIUM = [(300, 8, 299), (513, 16, 40)]
LARGE = [(1200, 256, 50), (2500, 16, 2400), (4096, 8, 1000)]  # real codebook sizes: on a GPU only
#: (n, dim, k, normalize) run on the Triton interpreter.
INTERPRETED = {(37, 4, 5, True), (37, 4, 5, False), (48, 8, 1, True), (20, 3, 19, True), (33, 2, 9, False)}


def _table(backend, cb, k, normalize=True):
    return sk.neighbor_table(cb.to(device_for(backend)), k, normalize=normalize, backend=backend).cpu()


@pytest.mark.interpreter(keep=lambda normalize, n, dim, k: (n, dim, k, normalize) in INTERPRETED)
@pytest.mark.select(lambda backend, normalize, n, dim, k: (n, dim, k) not in LARGE or on_gpu(backend))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n,dim,k", SMALL + MEDIUM + LARGE)
def test_matches_brute_force(kernel_backend, normalize, n, dim, k):
    cb = codebook(n, dim, seed=n)
    got = _table(kernel_backend, cb, k, normalize)
    want = sk.neighbor_table(cb, k, normalize=normalize, backend="reference")
    assert got.dtype == torch.int32 and got.shape == (n, k)
    d_got = neighbor_distances(cb, got, normalize=normalize)
    torch.testing.assert_close(d_got, neighbor_distances(cb, want, normalize=normalize), atol=1e-5, rtol=1e-5)
    assert (got != torch.arange(n)[:, None]).all()  # no self entries
    # Ascending, up to the float32 rounding of the kernels' distances (a near-tie may be ranked either way).
    assert (d_got[:, 1:] >= d_got[:, :-1] - (1e-6 + 1e-5 * d_got[:, :-1].abs())).all()
    assert all(len(set(row)) == k for row in got.tolist())
    assert (got != want).float().mean() < 0.01  # indices differ only where float32 rounding reorders near-ties
    if (n, dim, k) in SMALL:
        assert torch.equal(got, want)  # small random codebooks have no near-ties


def test_ties_go_to_lower_id(backend):
    # Codes 1..4 are equidistant from code 0; duplicates 5 == 1.
    cb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    got = _table(backend, cb, 5, normalize=False)
    assert got[0].tolist() == [1, 2, 3, 4, 5]
    assert got[1].tolist()[0] == 5 and got[5].tolist()[0] == 1


@pytest.mark.parametrize("normalize,k", [(False, 9), (False, 4), (True, 6)])
def test_exact_ties_on_a_lattice(kernel_backend, normalize, k):
    """An integer lattice with duplicated codes (exact distances, equal everywhere): ties go to the lower id."""
    lattice = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0],
                            [1.0, 1.0], [0.0, 2.0], [2.0, 2.0]]) + (1.0 if normalize else 0.0)
    got = _table(kernel_backend, lattice, k, normalize)
    assert torch.equal(got, sk.neighbor_table(lattice, k, normalize=normalize, backend="reference"))


@pytest.mark.interpreter(keep=False)
def test_many_exact_ties(kernel_backend):
    cb = torch.randint(-2, 3, (400, 2), generator=torch.Generator().manual_seed(0)).float()
    got = _table(kernel_backend, cb, 120, normalize=False)
    assert torch.equal(got, sk.neighbor_table(cb, 120, normalize=False, backend="reference"))


@pytest.mark.parametrize("k", [0, 6, -1])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be"):
        sk.neighbor_table(torch.randn(6, 2), k)


@pytest.mark.parametrize("normalize", [True, False])
def test_opcheck(kernel_backend, normalize):
    opcheck_public_call(sk.neighbor_table, kernel_backend, codebook(23), 4 if normalize else 22, normalize=normalize)


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("neighbor_table")
