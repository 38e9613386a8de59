"""neighbor_table: brute-force parity (distances, so near-ties cannot flake), properties, k bounds."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels.reference.neighbor_table import neighbor_distances

from _inputs import codebook
from conftest import device_for


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n,dim,k", [(2, 3, 1), (37, 8, 5), (300, 8, 299), (513, 16, 40)])
def test_matches_brute_force(backend, normalize, n, dim, k):
    device = device_for(backend)
    cb = codebook(n, dim, seed=n).to(device)
    got = sk.neighbor_table(cb, k, normalize=normalize, backend=backend).cpu()
    want = sk.neighbor_table(cb, k, normalize=normalize, backend="reference").cpu()
    assert got.dtype == torch.int32 and got.shape == (n, k)
    d_got = neighbor_distances(cb.cpu(), got, normalize=normalize)
    d_want = neighbor_distances(cb.cpu(), want, normalize=normalize)
    torch.testing.assert_close(d_got, d_want, atol=1e-5, rtol=1e-5)
    assert (got != torch.arange(n)[:, None]).all()  # no self entries
    assert (d_got[:, 1:] >= d_got[:, :-1] - 1e-6).all()  # ascending
    assert all(len(set(row)) == k for row in got.tolist())


def test_ties_go_to_lower_id(backend):
    # Codes 1..4 are equidistant from code 0; duplicates 5 == 1.
    cb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    got = sk.neighbor_table(cb.to(device_for(backend)), 5, normalize=False, backend=backend).cpu()
    assert got[0].tolist() == [1, 2, 3, 4, 5]
    assert got[1].tolist()[0] == 5 and got[5].tolist()[0] == 1


@pytest.mark.parametrize("k", [0, 6, -1])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be"):
        sk.neighbor_table(torch.randn(6, 2), k)
