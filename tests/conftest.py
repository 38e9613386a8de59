"""Shared test set-up: the Triton mode, the backend fixtures and the markers of the per-op tests.

``backend`` parametrises a test over every backend this run has (``reference``, ``cpu``, ``triton``, ``cuda``);
``kernel_backend`` over the same list without the reference (parity tests compare it with the reference).
Markers:

* ``@pytest.mark.backends("triton", ...)``: run only on these backends (backend-specific checks);
* ``@pytest.mark.interpreter(keep=...)``: which parametrisations run on the Triton CPU interpreter, which is slow.
  ``keep`` takes the test's parameters as keyword arguments and returns a bool; ``keep=False`` (the default) runs
  none there. The other parametrisations are deselected on the interpreter (not skipped), and run everywhere else.
* ``@pytest.mark.select(keep)``: the general form: ``keep(backend=..., **params)`` decides for every backend (e.g.
  real codebook sizes only where the backend runs on a GPU, :func:`_backends.on_gpu`).
"""

import os  # first: Triton picks interpreter or compiler when a kernel module is imported (docs/BUILD.md §5)

if os.environ.get("SPECDEC_TEST_DEVICE", "cpu") == "cpu":  # a GPU run sets SPECDEC_TEST_DEVICE=cuda
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import specdec_kernels._validation as _validation  # noqa: E402

if os.environ.get("SPECDEC_TEST_ASYNC_ROW_CHECKS") == "1":
    # The GPU rehearsal (.ci/run): the default level reports bad rows by device assertion on the CPU too, as it does
    # on CUDA, so a test that would catch a ValueError from it (and, on a GPU, abort its CUDA context) fails here.
    _validation.row_checks_are_async = lambda device: True

from _backends import ALL_BACKENDS, KERNEL_BACKENDS, TRITON_INTERPRETED, device_for  # noqa: E402,F401

#: The C++-extension backends (CPU; CUDA where built and a GPU is visible), for tests that pick their own list.
COMPILED_BACKENDS = [b for b in KERNEL_BACKENDS if b in ("cpu", "cuda")]
BACKEND_FIXTURES = {"backend": ALL_BACKENDS, "kernel_backend": KERNEL_BACKENDS}


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these backends")
    config.addinivalue_line("markers", "interpreter(keep=False): parametrisations that run on the Triton interpreter")
    config.addinivalue_line("markers", "select(keep): keep(backend=..., **params) -> whether a parametrisation runs")


def _explicitly_parametrized(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    for fixture, available in BACKEND_FIXTURES.items():
        if fixture not in metafunc.fixturenames or _explicitly_parametrized(metafunc, fixture):
            continue
        only = metafunc.definition.get_closest_marker("backends")
        chosen = [b for b in available if only is None or b in only.args]
        metafunc.parametrize(fixture, chosen, ids=chosen)


def _selected(item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = dict(callspec.params) if callspec is not None else {}
    backend = params.pop("backend", None) or params.pop("kernel_backend", None)
    if backend is None:
        return True
    select = item.get_closest_marker("select")
    if select is not None and not select.args[0](backend=backend, **params):
        return False
    if backend == "triton" and TRITON_INTERPRETED:
        marker = item.get_closest_marker("interpreter")
        keep = marker.kwargs.get("keep", False) if marker is not None else True
        return bool(keep(**params)) if callable(keep) else bool(keep)
    return True


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        (kept if _selected(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def small_blocks(monkeypatch):
    """Triton chunk widths of 8 (vocabulary) and 2 (neighbour rows): small rows span several chunks, so the
    kernels' chunk loops run on interpreter-sized inputs."""
    try:
        from specdec_kernels.triton import _common
    except ImportError:  # no Triton here: nothing to shrink
        return
    monkeypatch.setattr(_common, "MAX_VOCAB_BLOCK", 8)
    monkeypatch.setattr(_common, "MAX_NEIGHBOR_BLOCK", 2)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
