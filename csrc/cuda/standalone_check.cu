// Check A (docs/BUILD.md §4): a torch-free translation unit that instantiates every kernel template
// with every type and constant the glue uses, so compiling it for each architecture compiles all device
// code. Never part of the extension (setup.py skips this file); .ci/nvcc_checks.sh compiles it.
#include "build_tree.cuh"
#include "cspd_verify.cuh"
#include "gsd_group_mass.cuh"
#include "jacobi_step.cuh"
#include "lantern_relaxed_mass.cuh"
#include "neighbor_table.cuh"
#include "row_sources.cuh"
#include "verify_chain.cuh"
#include "verify_tree.cuh"

namespace specdec::gpu {

// Every launcher below launches all of its kernels (verify_chain: every chain rule and the unknown-code
// instantiation, with and without the row caches; verify_tree: exact, lantern and unknown), for every source pair
// the glue passes: probability tensors of float32 / float16 / bfloat16 (verify_chain, verify_tree), and raw logits of
// those dtypes with draft logits, draft probabilities (float32) or none (verify_chain_logits, jacobi_step,
// verify_tree_logits).
#define SPECDEC_INSTANTIATE(T)                                                                                      \
  template cudaError_t VerifyChain<TensorRows<T>, TensorRows<T>>(                                                  \
      const TensorRows<T>&, const TensorRows<T>&, const int64_t*, const float*, const float*, const int64_t*,      \
      const ChainParams&, int8_t*, int64_t*, int64_t*, cudaStream_t);                                              \
  template cudaError_t VerifyChain<LogitsRows<T>, LogitsRows<T>>(                                                  \
      const LogitsRows<T>&, const LogitsRows<T>&, const int64_t*, const float*, const float*, const int64_t*,      \
      const ChainParams&, int8_t*, int64_t*, int64_t*, cudaStream_t);                                              \
  template cudaError_t VerifyChain<LogitsRows<T>, TensorRows<float>>(                                              \
      const LogitsRows<T>&, const TensorRows<float>&, const int64_t*, const float*, const float*, const int64_t*,  \
      const ChainParams&, int8_t*, int64_t*, int64_t*, cudaStream_t);                                              \
  template cudaError_t VerifyTree<TensorRows<T>, TensorRows<T>>(                                                   \
      const TensorRows<T>&, const TensorRows<T>&, const int64_t*, const int64_t*, const float*, const float*,      \
      const int64_t*, const TreeParams&, double*, int64_t*, int64_t*, int64_t*, cudaStream_t);                     \
  template cudaError_t VerifyTree<LogitsRows<T>, TensorRows<float>>(                                               \
      const LogitsRows<T>&, const TensorRows<float>&, const int64_t*, const int64_t*, const float*, const float*,  \
      const int64_t*, const TreeParams&, double*, int64_t*, int64_t*, int64_t*, cudaStream_t);                     \
  template cudaError_t JacobiRefresh<LogitsRows<T>, TensorRows<float>>(                                            \
      const LogitsRows<T>&, const TensorRows<float>&, const int64_t*, const float*, const float*, const float*,    \
      const int64_t*, const bool*, const JacobiParams&, int8_t*, int64_t*, int64_t*, int64_t*, float*, int64_t*,   \
      cudaStream_t);                                                                                               \
  template cudaError_t RowStats<T>(const T*, int64_t, int, const LogitsProcessing&, logits::RowStatistics*,       \
                                   cudaStream_t);                                                                  \
  template cudaError_t LanternRelaxedMass<T>(const T*, const int64_t*, const int32_t*, int64_t, int, int,           \
                                             LanternConfig, float*, int32_t*, cudaStream_t);                        \
  template cudaError_t GsdGroupMass<T>(const T*, const T*, const int64_t*, int64_t, int, GsdParams, float*,         \
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
