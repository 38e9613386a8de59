// CPU neighbour table: per code, squared Euclidean distances to every other code (float32, sequential
// over the embedding dimension), then a partial selection of the k smallest (distance, id) pairs.
// A code whose codebook row holds NaN / inf is reported, not searched: its table row is -6 (code 6,
// methods.h), found by one O(N * D) pass over the raw codebook.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../checks.h"
#include "../verify_math.h"

namespace specdec::cpu {
namespace {

at::Tensor neighbor_table_cpu(const at::Tensor& codebook_in, int64_t k, bool normalize) {
  check_neighbor_table(codebook_in, k);
  const int64_t n = codebook_in.size(0), dim = codebook_in.size(1);
  const at::Tensor codebook = codebook_in.contiguous();
  std::vector<float> emb(codebook.data_ptr<float>(), codebook.data_ptr<float>() + n * dim);
  std::vector<char> bad_row(n);
  for (int64_t i = 0; i < n; ++i) bad_row[i] = has_non_finite(emb.data() + i * dim, dim);
  if (normalize) {  // x / max(||x||, 1e-12), as torch.nn.functional.normalize
    for (int64_t i = 0; i < n; ++i) {
      float sq = 0.0f;
      for (int64_t d = 0; d < dim; ++d) sq += emb[i * dim + d] * emb[i * dim + d];
      const float norm = std::max(std::sqrt(sq), 1e-12f);
      for (int64_t d = 0; d < dim; ++d) emb[i * dim + d] /= norm;
    }
  }
  at::Tensor table = at::empty({n, k}, codebook.options().dtype(at::kInt));
  int32_t* out = table.data_ptr<int32_t>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int32_t>> cand(n - 1);
    for (int64_t i = begin; i < end; ++i) {
      if (bad_row[i]) {
        for (int64_t m = 0; m < k; ++m) out[i * k + m] = static_cast<int32_t>(-kBadProbability);
        continue;
      }
      const float* ei = emb.data() + i * dim;
      int64_t c = 0;
      for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const float* ej = emb.data() + j * dim;
        float dist = 0.0f;
        for (int64_t d = 0; d < dim; ++d) {
          const float diff = ei[d] - ej[d];
          dist += diff * diff;
        }
        cand[c++] = {dist, static_cast<int32_t>(j)};
      }
      // Ascending distance, equal distances to the lower id, NaN after every number: a strict total
      // order (the std algorithms may read out of bounds under a comparator that NaN makes inconsistent).
      auto closer = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        const bool a_nan = std::isnan(a.first), b_nan = std::isnan(b.first);
        if (a_nan != b_nan) return b_nan;
        if (!a_nan && a.first != b.first) return a.first < b.first;
        return a.second < b.second;
      };
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), closer);
      std::sort(cand.begin(), cand.begin() + k, closer);
      for (int64_t m = 0; m < k; ++m) out[i * k + m] = cand[m].second;
    }
  });
  return table;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("neighbor_table", &neighbor_table_cpu); }

}  // namespace specdec::cpu
