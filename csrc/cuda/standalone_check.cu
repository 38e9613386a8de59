// Check A (docs/BUILD.md §4): a torch-free translation unit that instantiates every kernel template
// with every type and constant the glue uses, so compiling it for each architecture compiles all device
// code. Never part of the extension (setup.py skips this file); .ci/nvcc_checks.sh compiles it.
#include "build_tree.cuh"
#include "cspd_verify.cuh"
#include "gsd_group_mass.cuh"
#include "lantern_relaxed_mass.cuh"
#include "neighbor_table.cuh"
#include "verify_chain.cuh"
#include "verify_tree.cuh"

namespace specdec::gpu {

// Probability dtypes: float32, float16, bfloat16 (every launcher below launches all of its kernels:
// verify_chain its three methods, verify_tree exact and lantern).
#define SPECDEC_INSTANTIATE(T)                                                                                     \
  template cudaError_t VerifyChain<T>(const T*, const T*, const int64_t*, const float*, const float*,              \
                                      const int64_t*, int, const ChainParams&, int64_t*, int64_t*, cudaStream_t);  \
  template cudaError_t VerifyTree<T>(const T*, const T*, const int64_t*, const int64_t*, const float*,             \
                                     const float*, const int64_t*, bool, const TreeParams&, double*, int64_t*,     \
                                     int64_t*, int64_t*, cudaStream_t);                                            \
  template cudaError_t LanternRelaxedMass<T>(const T*, const int64_t*, const int32_t*, int64_t, int, int, bool,    \
                                             double, float*, int32_t*, cudaStream_t);                              \
  template cudaError_t GsdGroupMass<T>(const T*, const T*, const int64_t*, int64_t, int, GsdParams, float*,        \
                                       float*, cudaStream_t);

SPECDEC_INSTANTIATE(float)
SPECDEC_INSTANTIATE(__half)
SPECDEC_INSTANTIATE(__nv_bfloat16)
#undef SPECDEC_INSTANTIATE

}  // namespace specdec::gpu

// Non-template launchers are inline: odr-use them from an exported function so their kernels are
// emitted too.
extern "C" void* const* specdec_standalone_check_launchers() {
  static void* const launchers[] = {
      reinterpret_cast<void*>(&specdec::gpu::BuildTree),
      reinterpret_cast<void*>(&specdec::gpu::NeighborTable),
      reinterpret_cast<void*>(&specdec::gpu::CspdVerify),
  };
  return launchers;
}
