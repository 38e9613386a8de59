#!/usr/bin/env bash
# make gpu-check: everything a GPU machine should confirm, in one run of under 8 minutes.
#
#   1. build the CUDA extension for the visible GPU's architecture (in place);
#   2. run the CUDA and compiled-Triton tests of every op (SPECDEC_TEST_DEVICE=cuda);
#   3. benchmark verify_chain / verify_tree / neighbor_table / the relaxed masses against the eager reference,
#      torch.compile and FlashInfer's chain_speculative_sampling (when flashinfer imports), and the fused
#      logits -> verification step against eager and compiled processing;
#   4. run `specdec demo --device cuda --quick`.
#
# Results land in benchmarks/results/<gpu>*.{md,csv,png} (and are copied to $OUT when that is set, as on a borrowed
# machine). Without a GPU it is a dry run: it checks that its Python parts import and reports that no GPU was
# found, then exits 0 (CI runs this).
#
# Offline GPU machines: wheels of packages they lack (flashinfer-python, ...) can travel in .gpu-bundle/wheels and
# the Fashion-MNIST files in .gpu-bundle/fashion-mnist (`make gpu-bundle` fills both on a machine that has them).
# Usage: bash benchmarks/gpu_check.sh        (PYTHON=... to choose the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=benchmarks/results
BUNDLE=.gpu-bundle
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }
failures=()

step() {  # step NAME TIMEOUT_S COMMAND...: run one phase with a time limit; a failure is recorded, not fatal
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s, at $(elapsed))"
  if ! timeout "$limit" "$@"; then
    echo "== $name: FAILED or timed out" >&2
    failures+=("$name")
  fi
}

gpu=$($PY - <<'EOF'
import torch
print(torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "")
EOF
) || { echo "gpu-check: python ($PY) cannot import torch" >&2; exit 1; }

if [ -z "$gpu" ]; then
  echo "gpu-check: no GPU visible (torch.cuda.is_available() is False): dry run"
  $PY -c "import benchmarks.kernels, benchmarks.timing, specdec.cli; print('gpu-check: benchmark and demo entry points import')" \
    || exit 1
  $PY -m benchmarks.kernels --help >/dev/null || exit 1
  $PY -m specdec.cli demo --help >/dev/null || exit 1
  echo "gpu-check: dry run passed in $(elapsed); run this on a machine with a GPU for the real check"
  exit 0
fi

echo "gpu-check on $gpu"
$PY - <<'EOF'
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"{torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
EOF

if compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then  # packages the offline machine lacks
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/specdec-site "$BUNDLE"/wheels/*.whl \
    && export PYTHONPATH="/tmp/specdec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d "$BUNDLE/fashion-mnist" ] && [ -z "${SPECDEC_FASHION_MNIST_DIR:-}" ]; then
  export SPECDEC_FASHION_MNIST_DIR="$PWD/$BUNDLE/fashion-mnist"
fi
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

# sm_90a on Hopper (wgmma and friends), the plain capability elsewhere.
arch=$($PY -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}.{minor}' + ('a' if major == 9 else ''))")
step "build (TORCH_CUDA_ARCH_LIST=$arch)" 240 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
  $PY setup.py -q build_ext --inplace
$PY -c "import specdec_kernels as sk; print('backends:', sk.available_backends())"

tests=$(ls tests/test_*.py | grep -E 'verify|tree|neighbor|relaxed|lantern|gsd|cspd|cuda|triton|registration|bounds|hardening|logits' | tr '\n' ' ')
step "CUDA and compiled-Triton tests" 200 env SPECDEC_TEST_DEVICE=cuda \
  $PY -m pytest -q -x -p no:cacheprovider --benchmark-disable $tests

mkdir -p "$RESULTS"
step "kernel benchmarks" 150 $PY -m benchmarks.kernels --quick --device cuda --min-time 0.1 --out "$RESULTS"
if [ -f benchmarks/bench_logits.py ]; then
  step "fused logits benchmark" 90 $PY -m benchmarks.bench_logits --device cuda --out "$RESULTS"
fi
step "demo on CUDA (quick)" 150 $PY -m specdec.cli demo --device cuda --quick --out "$RESULTS/$gpu-demo"

if [ -n "${OUT:-}" ]; then  # a borrowed machine hands back what lies under $OUT
  cp "$RESULTS/$gpu"* "$OUT"/ 2>/dev/null || true
  [ -d "$RESULTS/$gpu-demo" ] && cp "$RESULTS/$gpu-demo"/demo.md "$OUT/$gpu-demo.md" 2>/dev/null || true
fi
echo "gpu-check finished in $(elapsed); failed phases: ${failures[*]:-none}"
[ ${#failures[@]} -eq 0 ]
