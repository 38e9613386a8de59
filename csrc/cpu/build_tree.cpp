// CPU tree buffers: ancestor mask, depths and root-to-leaf paths, one tree per task. Each tree's num_nodes
// and parents are checked first (methods.h: code 1, then 3); a bad tree is not walked but marked:
// position_ids[b, :] = -code, mask[b] all false, no paths.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../verify_math.h"

namespace specdec::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> build_tree_cpu(const at::Tensor& parents_in,
                                                              const at::Tensor& num_nodes_in) {
  check_build_tree(parents_in, num_nodes_in);
  const int64_t batch = parents_in.size(0), m = parents_in.size(1);
  const at::Tensor parents = parents_in.contiguous(), num_nodes = num_nodes_in.contiguous();
  const int64_t* par = parents.data_ptr<int64_t>();
  const int64_t* sizes = num_nodes.data_ptr<int64_t>();
  std::vector<int64_t> status(batch, kRowOk);
  for (int64_t b = 0; b < batch; ++b) {
    if (sizes[b] < 1 || sizes[b] > m) {
      status[b] = kBadCount;
      continue;
    }
    for (int64_t n = 0; n < sizes[b]; ++n)
      if (!valid_parent(n, par[b * m + n])) status[b] = kBadParent;
  }
  at::Tensor mask = at::zeros({batch, m, m}, parents.options().dtype(at::kBool));
  at::Tensor depth = at::zeros({batch, m}, parents.options());
  bool* mk = mask.data_ptr<bool>();
  int64_t* dp = depth.data_ptr<int64_t>();
  std::vector<int64_t> leaf_count(batch, 0), max_depth(batch, 0);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<char> has_child;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* pb = par + b * m;
      bool* mb = mk + b * m * m;
      int64_t* db = dp + b * m;
      if (status[b] != kRowOk) {  // mask stays all false
        std::fill(db, db + m, -status[b]);
        continue;
      }
      has_child.assign(m, 0);
      for (int64_t n = 0; n < m; ++n) mb[n * m + n] = true;
      for (int64_t n = 1; n < sizes[b]; ++n) {
        const int64_t parent = pb[n];
        has_child[parent] = 1;
        for (int64_t j = 0; j < parent + 1; ++j) mb[n * m + j] |= mb[parent * m + j];
        db[n] = db[parent] + 1;
        max_depth[b] = std::max(max_depth[b], db[n]);
      }
      for (int64_t n = 0; n < sizes[b]; ++n) leaf_count[b] += !has_child[n];
    }
  });
  // An empty batch has no paths (and no maxima to take).
  const int64_t num_paths = batch ? *std::max_element(leaf_count.begin(), leaf_count.end()) : 0;
  const int64_t path_len = batch ? *std::max_element(max_depth.begin(), max_depth.end()) + 1 : 0;
  at::Tensor retrieve = at::full({batch, num_paths, path_len}, -1, parents.options());
  int64_t* rt = retrieve.data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<char> has_child;
    for (int64_t b = begin; b < end; ++b) {
      if (status[b] != kRowOk) continue;
      const int64_t* pb = par + b * m;
      has_child.assign(m, 0);
      for (int64_t n = 1; n < sizes[b]; ++n) has_child[pb[n]] = 1;
      int64_t leaf = 0;
      for (int64_t n = 0; n < sizes[b]; ++n) {
        if (has_child[n]) continue;
        int64_t* path = rt + (b * num_paths + leaf++) * path_len;
        const int64_t d = dp[b * m + n];
        for (int64_t node = n, level = d; level >= 0; node = pb[node], --level) path[level] = node;
      }
    }
  });
  return {mask, depth, retrieve};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) { m.impl("build_tree", &build_tree_cpu); }

}  // namespace specdec::cpu
