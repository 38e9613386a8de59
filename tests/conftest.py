import os  # must run before torch / triton / the package are imported: Triton picks interpreter vs compiler at import

if os.environ.get("SPECDEC_TEST_DEVICE", "cpu") == "cpu":  # a GPU run sets SPECDEC_TEST_DEVICE=cuda
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import specdec_kernels  # noqa: E402

#: Compiled backends this run tests against the reference (the reference itself is the oracle).
COMPILED_BACKENDS = [b for b in ("cpu", "cuda") if b in specdec_kernels.available_backends()]


def device_for(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


@pytest.fixture(params=COMPILED_BACKENDS)
def backend(request):
    """Each compiled backend (C++ CPU; CUDA where built and a GPU is visible)."""
    return request.param


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
