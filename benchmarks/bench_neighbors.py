"""pytest-benchmark: neighbor_table, lantern_relaxed_mass and gsd_group_mass."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from benchmarks.inputs import codebook_inputs, neighbor_inputs, verify_chain_inputs

BACKENDS = [b for b in ("cpu", "cuda") if b in sk.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_neighbor_table(benchmark, backend):
    cb = codebook_inputs(1024, 8, "cuda" if backend == "cuda" else "cpu")
    benchmark(lambda: sk.neighbor_table(cb, 16, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_relaxed_masses(benchmark, backend):
    device = "cuda" if backend == "cuda" else "cpu"
    c = verify_chain_inputs(8, 15, 4096, with_q=False, device=device)
    rows, x = c["p"][:, :15].reshape(-1, 4096), c["draft"].reshape(-1)
    table = neighbor_inputs(4096, 32, device)

    def both():
        return (sk.lantern_relaxed_mass(rows, x, table, delta=0.1, backend=backend, validate=False),
                sk.gsd_group_mass(rows, None, x, backend=backend, validate=False))

    (pt, m), (gp, gq) = benchmark(both)
    want = reference.lantern_relaxed_mass(rows.cpu(), x.cpu(), table.cpu(), delta=0.1)
    assert torch.equal(m.cpu(), want[1])
