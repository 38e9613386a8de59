#!/usr/bin/env bash
# The GPU check: everything a lent GPU machine should confirm, in one direct run (no make, nothing installed,
# nothing fetched), in phases that each write their results as soon as they finish (docs/BUILD.md §8):
#
#   build   the C++ and CUDA extension for the visible GPU (sm_90a on Hopper); a CUDA build that cannot happen
#           fails loudly (SPECDEC_CUDA=1, setup.py);
#   tests   the CUDA and compiled-Triton cases of the GPU test selection (SPECDEC_TEST_DEVICE=cuda), no -x;
#   kernels the kernel sweep: ours vs eager, torch.compile, Triton and FlashInfer ("not available" when it does
#           not import), with a time budget;
#   logits  the fused logits -> verification step vs eager and compiled processing, with a time budget;
#   demo    `specdec demo --device cuda --quick` (needs the Fashion-MNIST files: .gpu-bundle/fashion-mnist).
#
# Results go to $OUT (the lent machine hands back what lies there; default benchmarks/results/gpu-check), at most
# 8 files: gpu_check.log (its first line: commit, GPU, nvcc, torch, Triton, whether the CUDA backend was built),
# tests.xml, <gpu>.csv / .md / .png (kernels), <gpu>-logits.md, <gpu>-demo.md, and results.tar.gz (every file
# the phases wrote, for benchmarks/results/ and results/). Each phase has its own time limit; they add up to
# 480 s, inside the lent machine's 600 s per command, and what a phase leaves unused passes on to the next.
#
# --rehearse (CI, a CPU machine): the same phases and files with what needs a GPU left out: the build without
# CUDA, the GPU test selection collected in full and run on a few fast files, the benchmarks on the CPU with tiny
# budgets, the demo's quick path on a few images; then the outputs are checked (.ci/run).
# Without --rehearse and without a GPU the script stops with an error.
#
# Usage: bash benchmarks/gpu_check.sh [--rehearse] [--phases build,tests,kernels,logits,demo]
#        PYTHON=... chooses the interpreter (default python3, the GPU machine's preinstalled torch).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
REHEARSE=0
PHASES=build,tests,kernels,logits,demo
while [ $# -gt 0 ]; do
  case $1 in
    --rehearse) REHEARSE=1 ;;
    --phases) PHASES=$2; shift ;;
    --phases=*) PHASES=${1#--phases=} ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for p in ${PHASES//,/ }; do
  case $p in build|tests|kernels|logits|demo) ;; *) echo "gpu-check: unknown phase $p" >&2; exit 2 ;; esac
done
wanted() { [[ ",$PHASES," == *",$1,"* ]]; }

# Per-phase time limits (seconds). They add up to 480; the run as a whole stays under the 600 s command limit.
# What a phase leaves unused passes on to the next ones (slack), so the total never grows.
LIMIT_BUILD=150 LIMIT_TESTS=150 LIMIT_KERNELS=80 LIMIT_LOGITS=40 LIMIT_DEMO=60
slack=0
limit_of() { echo $(( $1 + slack )); }  # a phase's limit: its own plus what earlier phases left

OUT_DIR=${OUT:-$ROOT/benchmarks/results/gpu-check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
WORK=$ROOT/.cache/gpu-check  # everything the phases write, before it is copied to $OUT
rm -rf "$WORK" && mkdir -p "$WORK"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))"; }
failures=()

# Warm reruns on the same machine reuse the compile caches (ignored paths survive between calls there).
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ROOT/.cache/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/.cache/inductor}
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu-bundle/fashion-mnist ] && [ -z "${SPECDEC_FASHION_MNIST_DIR:-}" ]; then
  export SPECDEC_FASHION_MNIST_DIR=$ROOT/.gpu-bundle/fashion-mnist
fi
if compgen -G ".gpu-bundle/wheels/*.whl" >/dev/null; then  # optional packages the offline machine lacks (FlashInfer)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$ROOT/.cache/gpu-site" .gpu-bundle/wheels/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$ROOT/.cache/gpu-site"
fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# The commit: from git where there is a checkout, else from .gpu-bundle/COMMIT (written by `make gpu-bundle`,
# since the lent machine gets the tree without .git).
# The bundle's commit wins: a lent machine may hold a .git that is not the tree it was sent (seen on the H200).
git_commit=
if git rev-parse --git-dir >/dev/null 2>&1; then
  git_commit=$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo -dirty)
fi
if [ -f .gpu-bundle/COMMIT ]; then
  SPECDEC_COMMIT=$(head -c 64 .gpu-bundle/COMMIT | tr -d '\n')
  [ -n "$git_commit" ] && [ "${git_commit%-dirty}" != "$SPECDEC_COMMIT" ] && SPECDEC_COMMIT="$SPECDEC_COMMIT(git:$git_commit)"
else
  SPECDEC_COMMIT=${git_commit:-unknown}
fi
export SPECDEC_COMMIT

gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else '')" 2>"$WORK/torch.err") \
  || { echo "gpu-check: $PY cannot import torch: $(cat "$WORK/torch.err")" | tee "$LOG" >&2; exit 1; }
if [ -z "$gpu" ] && [ "$REHEARSE" = 0 ]; then
  echo "gpu-check: no GPU visible (torch.cuda.is_available() is False); on a CPU machine run --rehearse" | tee "$LOG" >&2
  exit 1
fi
DEVICE=cuda NAME=$gpu
if [ "$REHEARSE" = 1 ]; then
  DEVICE=cpu NAME=$($PY -c "import sys; sys.path.insert(0, '.'); from benchmarks.timing import machine_name; print(machine_name())")
fi

collect() {  # copy the results written so far to $OUT: the readable tables directly, everything in one archive
  local f
  for f in "$WORK/bench/$NAME.csv" "$WORK/bench/${NAME}.md" "$WORK/bench/$NAME.png" "$WORK/bench/$NAME-logits.md"; do
    [ -f "$f" ] && cp "$f" "$OUT_DIR/"
  done
  [ -f "$WORK/demo/demo.md" ] && cp "$WORK/demo/demo.md" "$OUT_DIR/$NAME-demo.md"
  [ -f "$WORK/tests.xml" ] && cp "$WORK/tests.xml" "$OUT_DIR/tests.xml"
  (cd "$WORK" && ls -d bench demo tests.xml 2>/dev/null | tar czf "$OUT_DIR/results.tar.gz" -T -) 2>/dev/null
}

phase() {  # phase NAME LIMIT COMMAND...: run one phase under its time limit; a failure is recorded, not fatal
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name: start at $(elapsed) s, limit $limit s"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  slack=$(( limit - ($(date +%s) - t0) )); [ $slack -gt 0 ] || slack=0
  if [ $rc -eq 0 ]; then
    echo "== $name: ok in $(( $(date +%s) - t0 )) s"
  else
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      echo "== $name: TIMED OUT after $limit s"
    else
      echo "== $name: FAILED (exit $rc)"
    fi
    failures+=("$name")
  fi
  collect
}

# ------------------------------------------------------------------ build (its output goes to the log after the
# first line, which needs to know what the build produced)
build_log=$OUT_DIR/build.log
: >"$build_log"
if wanted build; then
  if [ "$REHEARSE" = 1 ]; then
    build_env=(env MAX_JOBS="${MAX_JOBS:-2}")
  else
    # sm_90a on Hopper (wgmma and friends), the plain capability elsewhere; every core of the lent machine.
    arch=$($PY -c "import torch; ma, mi = torch.cuda.get_device_capability(); print(f'{ma}.{mi}' + ('a' if ma == 9 else ''))")
    build_env=(env SPECDEC_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)")
  fi
  # (the phase's own lines go to the build log too)
  phase build "$(limit_of $LIMIT_BUILD)" "${build_env[@]}" $PY setup.py -q build_ext --inplace >>"$build_log" 2>&1
fi

# ------------------------------------------------------------------ first line: what this run is
$PY - >"$LOG" 2>&1 <<EOF
import os, platform, re, shutil, subprocess, time
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "missing"
try:
    import specdec_kernels as sk
    from specdec_kernels import _backend
    cuda_backend = "built" if _backend._has_cuda_kernels() else "NOT-BUILT"
    backends = ",".join(sk.available_backends())
except Exception as exc:  # the package does not import: say so on the first line
    cuda_backend, backends = "NOT-BUILT", f"import-failed({type(exc).__name__})"
nvcc = shutil.which("nvcc")
if nvcc:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    nvcc = (re.findall(r"V(\d[\d.]*)", out) or ["unknown"])[-1]
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
cap = ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else "-"
print(f"gpu-check commit=$SPECDEC_COMMIT gpu={gpu.replace(' ', '-')} capability={cap} nvcc={nvcc or 'missing'} "
      f"torch={torch.__version__} cuda={torch.version.cuda} triton={triton_version} python={platform.python_version()} "
      f"cuda_backend={cuda_backend} backends={backends} rehearsal=$REHEARSE date={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
EOF
cat "$build_log" >>"$LOG"
head -n 1 "$LOG"
[[ " ${failures[*]:-} " == *" build "* ]] && tail -n 40 "$build_log"  # the error, in the call's output too
rm -f "$build_log"
exec > >(tee -a "$LOG") 2>&1  # from here on, everything goes to the log as it happens
if [ "$REHEARSE" = 0 ] && ! head -n 1 "$LOG" | grep -q "cuda_backend=built"; then
  echo "gpu-check: ERROR: THE CUDA BACKEND WAS NOT BUILT (see the build output above); the CUDA rows are missing" >&2
  failures+=("cuda-backend-not-built")
fi

# ------------------------------------------------------------------ tests
# The op tests first (verify_chain, verify_tree, the logits ops), then registration, validation, bounds, the
# decoding loop's relaxed and tree methods and the hardening tests; on a GPU only their CUDA and compiled-Triton
# cases (the CPU cases run in CI). Under pytest-xdist a worker that a CUDA fault kills is replaced.
tests="tests/test_verify_chain.py tests/test_verify_tree.py tests/test_verify_logits.py tests/test_build_tree.py
  tests/test_neighbor_table.py tests/test_lantern_relaxed_mass.py tests/test_gsd_group_mass.py tests/test_cspd_verify.py
  tests/test_sample_from_probs.py tests/test_kernel_bounds.py tests/test_registration.py tests/test_validation.py
  tests/test_entry_point_errors.py tests/test_decoding_relaxed.py tests/test_decoding_trees.py tests/test_hardening.py
  tests/test_jacobi_step.py"
pytest_args=(-p no:cacheprovider --benchmark-disable -rfE --durations=15 --junitxml="$WORK/tests.xml")
if wanted tests; then
  if [ "$REHEARSE" = 1 ]; then
    # No device: the whole selection is collected (imports, parametrisation, markers under the GPU mode), then
    # the same command runs on a fast part of it (no torch.compile), where every case runs on the CPU backends.
    # SPECDEC_TEST_ASYNC_ROW_CHECKS=1: the default level checks row codes by device assertion on the CPU too, as on
    # CUDA, so a test that expects a ValueError from it (which on a GPU would abort the worker's CUDA context and
    # every test after it) fails here; bad-row tests use tests/_backends.raises_bad_row.
    phase "tests (collect)" 90 env SPECDEC_TEST_DEVICE=cuda $PY -m pytest --collect-only -qq -p no:cacheprovider $tests
    phase tests "$(limit_of $LIMIT_TESTS)" env SPECDEC_TEST_DEVICE=cuda SPECDEC_TEST_ASYNC_ROW_CHECKS=1 \
      $PY -m pytest "${pytest_args[@]}" -q -k "not compile" \
      tests/test_hardening.py tests/test_sample_from_probs.py tests/test_bad_values.py tests/test_validation.py
  else
    # pytest-xdist (preinstalled there) spreads the Triton compiles over the cores; a crashed worker is replaced.
    # pytest-timeout (likewise) ends a hung test after 60 s and the session before the phase limit, so the
    # failures' tracebacks and the report are still written; -v names each test as it finishes.
    extra=()
    $PY -c "import xdist" 2>/dev/null && extra+=(-n 8 --max-worker-restart=4)
    lim=$(limit_of $LIMIT_TESTS)
    if $PY -m pytest --help 2>/dev/null | grep -q -- "--session-timeout"; then
      extra+=(--timeout=60 --session-timeout=$(( lim - 25 )))
    fi
    phase tests "$lim" env SPECDEC_TEST_DEVICE=cuda $PY -m pytest "${pytest_args[@]}" -v "${extra[@]}" \
      -k "cuda or triton" $tests
  fi
fi

# ------------------------------------------------------------------ benchmarks
mkdir -p "$WORK/bench"
if wanted kernels; then
  if [ "$REHEARSE" = 1 ]; then
    phase kernels "$(limit_of $LIMIT_KERNELS)" $PY -m benchmarks.kernels --quick --device cpu --min-time 0.01 \
      --budget-s 5 \
      --skip compiled --name "$NAME" --out "$WORK/bench"
  else
    lim=$(limit_of $LIMIT_KERNELS)
    phase kernels "$lim" $PY -m benchmarks.kernels --quick --device cuda --min-time 0.1 \
      --budget-s $(( lim - 20 )) --name "$NAME" --out "$WORK/bench"
  fi
fi
if wanted logits; then
  if [ "$REHEARSE" = 1 ]; then
    phase logits "$(limit_of $LIMIT_LOGITS)" $PY -m benchmarks.bench_logits --device cpu --threads 1 --rounds 3 \
      --budget-s 5 \
      --cases testbed-b1 --out "$WORK/bench"
  else
    lim=$(limit_of $LIMIT_LOGITS)
    phase logits "$lim" $PY -m benchmarks.bench_logits --device cuda --rounds 50 --budget-s $(( lim / 2 )) \
      --out "$WORK/bench"
  fi
fi

# ------------------------------------------------------------------ demo
if wanted demo; then
  if [ "$REHEARSE" = 1 ]; then
    phase demo "$(limit_of $LIMIT_DEMO)" $PY -m specdec.cli demo --device cpu --quick --threads 1 --images-per-class 1 \
      --judge-images 20 --bootstrap 20 --no-cspd --methods sd --out "$WORK/demo"
  else
    phase demo "$(limit_of $LIMIT_DEMO)" $PY -m specdec.cli demo --device cuda --quick --threads 8 --out "$WORK/demo"
  fi
  [ -f "$WORK/demo/demo.md" ] && cat "$WORK/demo/demo.md"
fi

collect

# ------------------------------------------------------------------ what goes back: the lent machine returns at
# most 8 files of at most 16 MiB (64 MiB together) from $OUT, named in letters, digits, '.', '_' and '-'
$PY - "$OUT_DIR" "$NAME" "$PHASES" "${failures[*]:-}" <<'EOF' || failures+=("outputs")
import csv, os, re, sys
import xml.etree.ElementTree as ET

out, name, phases, failed = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split()
problems = []
files = sorted(os.listdir(out))
sizes = {f: os.path.getsize(os.path.join(out, f)) for f in files}
if len(files) > 8:
    problems.append(f"{len(files)} files in $OUT, at most 8 come back: {files}")
problems += [f"{f}: {s} bytes, over 16 MiB" for f, s in sizes.items() if s > 16 << 20]
problems += [f"{f}: not a plain file or an odd name" for f in files
             if not re.fullmatch(r"[A-Za-z0-9._-]+", f) or not os.path.isfile(os.path.join(out, f))]
if sum(sizes.values()) > 64 << 20:
    problems.append(f"{sum(sizes.values())} bytes in all, over 64 MiB")
with open(os.path.join(out, "gpu_check.log")) as f:
    first = f.readline()
for key in ("commit=", "gpu=", "nvcc=", "torch=", "triton=", "cuda_backend="):
    if f" {key}" not in first:
        problems.append(f"the log's first line lacks {key}: {first.strip()!r}")
expected = {"tests": ["tests.xml"], "kernels": [f"{name}.csv", f"{name}.md", f"{name}.png"],
            "logits": [f"{name}-logits.md"], "demo": [f"{name}-demo.md"]}
for phase in phases:
    if phase not in failed:  # a failed phase is reported already
        problems += [f"phase {phase}: {f} missing" for f in expected.get(phase, []) if f not in files]
if "tests" in phases and "tests.xml" in files:
    suites = ET.parse(os.path.join(out, "tests.xml")).getroot()
    if sum(int(s.get("tests", 0)) for s in suites.iter("testsuite")) == 0:
        problems.append("tests.xml records no test")
if "kernels" in phases and f"{name}.csv" in files:
    with open(os.path.join(out, f"{name}.csv")) as f:
        providers = {r["provider"] for r in csv.DictReader(line for line in f if not line.startswith("#"))}
    if "ours" not in providers or "flashinfer" not in providers:
        problems.append(f"{name}.csv: providers {sorted(providers)} lack ours or flashinfer (timed or not available)")
for p in problems:
    print("gpu-check outputs:", p, file=sys.stderr)
print(f"gpu-check outputs: {len(files)} files, {sum(sizes.values()) / 2**20:.1f} MiB, "
      f"{'ok' if not problems else f'{len(problems)} problems'}")
sys.exit(1 if problems else 0)
EOF

echo "gpu-check finished in $(elapsed) s; failed: ${failures[*]:-none}; results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
[ ${#failures[@]} -eq 0 ]
