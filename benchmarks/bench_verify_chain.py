"""pytest-benchmark: verify_chain per backend at the issue's target shape (B 8, L 15, V 4096)."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from benchmarks.inputs import verify_chain_inputs

BACKENDS = [b for b in ("cpu", "cuda") if b in sk.available_backends()]


@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_chain_backend(benchmark, backend, with_q):
    c = verify_chain_inputs(8, 15, 4096, with_q=with_q, device="cuda" if backend == "cuda" else "cpu")
    out = benchmark(lambda: sk.verify_chain(**c, backend=backend, validate=False))
    want = reference.verify_chain(**c)
    assert torch.equal(out[0].cpu(), want[0].cpu()) and torch.equal(out[1].cpu(), want[1].cpu())


def test_verify_chain_reference(benchmark):
    c = verify_chain_inputs(8, 15, 4096)
    benchmark(lambda: reference.verify_chain(**c))
