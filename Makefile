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

.PHONY: data demo sweep test bench fuzz install build nvcc-check gpu-check gpu-bundle gpu-rehearsal clean

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

# The long fuzz run (CI runs tests/test_fuzz.py with its small fixed-seed budget): every op x backend x validate
# level, FUZZ_EXAMPLES batches of FUZZ_BATCH cases per op; prints how many calls it tried.
FUZZ_EXAMPLES ?= 40
FUZZ_BATCH ?= 6
FUZZ_SEED ?= 20261201
fuzz: install build
	SPECDEC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SPECDEC_FUZZ_BATCH=$(FUZZ_BATCH) SPECDEC_FUZZ_SEED=$(FUZZ_SEED) \
	  OMP_NUM_THREADS=1 $(PY) -m pytest -q -s tests/test_fuzz.py --benchmark-disable -p no:cacheprovider

nvcc-check: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash .ci/nvcc_checks.sh

# The GPU check (benchmarks/gpu_check.sh, docs/BUILD.md §8): on a lent GPU machine the script runs directly, not
# through make (nothing to install there); this target is for a GPU machine of one's own. It uses the venv when
# there is one, else the machine's python3 (a GPU machine's preinstalled torch). Without a GPU it stops with an error.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHON=$(GPU_PY) bash benchmarks/gpu_check.sh

# What travels to the lent machine beside the tree (carried as .gpu-bundle): the four Fashion-MNIST files for the
# GPU demo and the commit (the machine gets no .git). FLASHINFER=1 adds the one FlashInfer that fits (two wheels,
# about 10 MiB; its JIT on that machine is unverified, so it is off by default: docs/BUILD.md §8). Fails when the
# tree that travels plus the bundle passes the 64 MiB a call may carry.
GPU_CARRY_LIMIT := 67108864
FLASHINFER_WHEELS := flashinfer-python==0.5.0 apache-tvm-ffi==0.1.15.post2
gpu-bundle: data
	rm -rf .gpu-bundle && mkdir -p .gpu-bundle/fashion-mnist
	$(if $(filter 1,$(FLASHINFER)),$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform any -d .gpu-bundle/wheels $(FLASHINFER_WHEELS))
	cp $$(if [ -n "$$SPECDEC_FASHION_MNIST_DIR" ]; then ls "$$SPECDEC_FASHION_MNIST_DIR"/*-ubyte.gz; \
	  else dpkg -L dataset-fashion-mnist | grep -- '-ubyte.gz$$'; fi) .gpu-bundle/fashion-mnist/
	test $$(ls .gpu-bundle/fashion-mnist | wc -l) -eq 4
	echo "$$(git rev-parse --short HEAD)$$([ -n "$$(git status --porcelain --untracked-files=no)" ] && echo -dirty)" \
	  > .gpu-bundle/COMMIT
	@tree=$$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
	  | awk '{s += $$1} END {print s + 0}'); \
	bundle=$$(du -sb .gpu-bundle | cut -f1); total=$$((tree + bundle)); \
	echo "gpu-bundle: tree $$((tree / 1048576)) MiB + .gpu-bundle $$((bundle / 1048576)) MiB = $$((total / 1048576)) MiB (limit 64 MiB), commit $$(cat .gpu-bundle/COMMIT)"; \
	test $$total -le $(GPU_CARRY_LIMIT) || { echo "gpu-bundle: over the 64 MiB a lent machine may carry" >&2; exit 1; }

# The rehearsal of the GPU check on a CPU machine (CI): every phase, file and time limit of the script, with what
# needs a GPU left out (benchmarks/gpu_check.sh --rehearse; it checks its own outputs); and the bundle's size.
gpu-rehearsal: build gpu-bundle
	rm -rf build/gpu-rehearsal
	OUT=$(CURDIR)/build/gpu-rehearsal PYTHON=$(PY) OMP_NUM_THREADS=1 bash benchmarks/gpu_check.sh --rehearse

clean:
	rm -rf build specdec_kernels/*.so $(VENV)
