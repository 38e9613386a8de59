#!/usr/bin/env bash
# Compile-only checks of the CUDA sources on machines without a GPU (docs/BUILD.md §4).
#   Check A: the torch-free kernels (csrc/cuda/standalone_check.cu instantiates every template) for each
#            target architecture, one at a time, with ptxas resource usage (registers, spills) printed.
#            sm_90a is compiled as C++17, exactly what the lent H100 / H200 machines build (torch 2.11's
#            BuildExtension passes -std=c++17), and sm_80 as C++20 (torch >= 2.13), so both dialects are covered
#            at no extra cost.
#   Check B: the torch glue (csrc/cuda/glue.cu) once, for sm_90a as C++17 (the lent machines' build), against
#            the installed torch's headers plus a throwaway shim for the one generated header the CPU wheel lacks.
#   Check C: the C++ CPU sources as C++17 (the lent machines' dialect; CI's own build compiles them as C++20),
#            syntax and semantics only (-fsyntax-only: no code generated).
# Objects go to build/. Needs nvcc and, for check B, the venv's python (with torch) first on PATH.
# Usage: bash .ci/nvcc_checks.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
limit=${NVCC_CHECK_TIMEOUT:-900}  # seconds per nvcc invocation

elapsed() { echo $(( $(date +%s) - $1 )); }
total_start=$(date +%s)

for arch_std in sm_90a:c++17 sm_80:c++20; do
  arch=${arch_std%%:*} std=${arch_std##*:}
  start=$(date +%s)
  log=build/nvcc_check_${arch}.log
  if ! timeout "$limit" nvcc -O3 -std="$std" -arch="$arch" -Xptxas -v -Werror all-warnings \
      -c csrc/cuda/standalone_check.cu -o "build/nvcc_check_${arch}.o" >"$log" 2>&1; then
    cat "$log"
    echo "check A ($arch, $std): FAILED" >&2
    exit 1
  fi
  spills=$(grep -c "[1-9][0-9]* bytes spill stores" "$log" || true)
  kernels=$(grep -c "Compiling entry function" "$log" || true)
  echo "check A ($arch, $std): ok, $kernels kernels, $spills with register spills, $(elapsed "$start") s (ptxas report: $log)"
done

start=$(date +%s)
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$shim/c10/cuda/impl/cuda_cmake_macros.h"
torch_inc=$(python -c "import torch.utils.cpp_extension as e; print(' '.join('-I' + p for p in e.include_paths()))")
py_inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
# shellcheck disable=SC2086  # torch_inc is a list of -I flags
if ! timeout "$limit" nvcc -O3 -std=c++17 -arch=sm_90a -I"$shim" $torch_inc -I"$py_inc" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    --expt-relaxed-constexpr -Xcompiler -fPIC -c csrc/cuda/glue.cu -o build/nvcc_glue.o >build/nvcc_glue.log 2>&1; then
  cat build/nvcc_glue.log
  echo "check B (glue, sm_90a, c++17): FAILED" >&2
  exit 1
fi
echo "check B (glue, sm_90a, c++17): ok, $(elapsed "$start") s"

start=$(date +%s)
cxx17_check() {  # one CPU source as C++17; its log under build/
  local log=build/cxx17_check_$(basename "$1" .cpp).log
  # shellcheck disable=SC2086  # torch_inc is a list of -I flags
  timeout "$limit" g++ -std=c++17 -fsyntax-only -fopenmp -DSPECDEC_WITH_CUDA $torch_inc -I"$py_inc" "$1" >"$log" 2>&1 \
    || { cat "$log"; echo "check C ($1, c++17): FAILED" >&2; return 1; }
}
export -f cxx17_check
export limit torch_inc py_inc
# Two at a time (CI's two cores).
if ! printf '%s\0' csrc/*.cpp csrc/cpu/*.cpp | xargs -0 -n 1 -P 2 bash -c 'cxx17_check "$0"'; then
  exit 1
fi
echo "check C (CPU sources, c++17): ok, $(elapsed "$start") s"
echo "nvcc checks passed in $(elapsed "$total_start") s"
