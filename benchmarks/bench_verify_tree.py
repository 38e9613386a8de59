"""pytest-benchmark: verify_tree and build_tree on an EAGLE-style 25-node tree."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from benchmarks.inputs import verify_tree_inputs

BACKENDS = [b for b in ("cpu", "cuda") if b in sk.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_tree_backend(benchmark, backend):
    c = verify_tree_inputs(8, 25, 4096, device="cuda" if backend == "cuda" else "cpu")
    out = benchmark(lambda: sk.verify_tree(**c, backend=backend, validate=False))
    want = reference.verify_tree(**c)
    assert all(torch.equal(o.cpu(), w.cpu()) for o, w in zip(out, want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_tree_backend(benchmark, backend):
    c = verify_tree_inputs(8, 64, 16, device="cuda" if backend == "cuda" else "cpu")
    benchmark(lambda: sk.build_tree(c["parents"], c["num_nodes"], backend=backend, validate=False))
