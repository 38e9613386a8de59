# Two commands set everything up on a fresh machine:
#   make demo   - the main job (creates .venv, installs, builds, runs the demo)
#   make test   - the test suite (same set-up, then pytest)
# torch is pinned and installed first, alone: setup.py imports it (docs/BUILD.md §2).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
DEPS := "triton==3.6.0" "numpy<2.4" setuptools wheel ninja pytest pytest-benchmark hypothesis \
        tqdm safetensors matplotlib pillow scipy "transformers==5.23.0"
export MAX_JOBS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: data demo sweep test bench install build nvcc-check gpu-check gpu-bundle clean

$(VENV)/.installed: pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@# Use a torch that already imports (the GPU machine's preinstalled build); otherwise install the pin.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q $(DEPS)
	$(PIP) install -q -e . --no-build-isolation --no-deps
	@touch $@

install: $(VENV)/.installed

# Rebuild the extension in place after C++ changes (incremental; pip builds are not).
build: install
	$(PY) setup.py build_ext --inplace

# Fashion-MNIST for the testbed comes from Debian (docs/TESTBED.md); install it when missing.
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	  sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  echo "warning: could not install dataset-fashion-mnist (the demo and testbed tests need it)"

demo: install build data
	$(VENV)/bin/specdec demo $(DEMO_ARGS)

sweep: install build data
	$(VENV)/bin/specdec sweep $(SWEEP_ARGS)

test: install build data
	$(PY) -m pytest -q --benchmark-disable

bench: install build
	$(PY) -m benchmarks.kernels

nvcc-check: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash .ci/nvcc_checks.sh

# One-shot GPU check (benchmarks/gpu_check.sh): build CUDA, GPU tests, benchmarks vs FlashInfer, GPU demo.
# Uses the venv when there is one, else the machine's python3 (a GPU machine's preinstalled torch); without a GPU
# it is a dry run. Nothing is installed from the network.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHON=$(GPU_PY) bash benchmarks/gpu_check.sh

# What an offline GPU machine needs beside the tree: FlashInfer wheels for its Python (3.12) and the test data.
gpu-bundle: install
	mkdir -p .gpu-bundle/wheels .gpu-bundle/fashion-mnist
	-$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu-bundle/wheels flashinfer-python
	cp $$(dpkg -L dataset-fashion-mnist | grep -- '-ubyte.gz$$') .gpu-bundle/fashion-mnist/

clean:
	rm -rf build specdec_kernels/*.so $(VENV)
