// Logits -> verification on CUDA (verify_chain_logits / verify_tree_logits), torch-free. Per call, no host
// synchronisation: row codes (contract §3, csrc/verify_logits_math.h, shared with the CPU kernel), one processing
// kernel per logits tensor (CFG, temperature, top-k, top-p, softmax; one block per row, the per-element math of
// csrc/verify_logits_math.h), the chain / tree verification kernels on the processed float32 rows, and a fix-up
// that reports bad rows (next_token = -code). Semantics: specdec_kernels/reference/verify_logits.py.
// top-k is an exact bisection over order-preserving int32 keys of the processed logits (32 block-wide counts);
// top-p a bisection over the float32 probabilities' bits (32 block-wide float64 sums; the sums' order differs from
// the reference's sequential one only at float64 rounding level).
#pragma once

#include <cub/block/block_reduce.cuh>

#include "../verify_logits_math.h"
#include "verify_common.cuh"

namespace specdec::gpu {

struct LogitsProcessing {
  bool cfg;
  double scale;
  double temperature;  // already clamped to >= kMinTemperature
  int top_k;           // 0 or >= V: off
  double top_p;        // >= 1: off
};

__device__ __forceinline__ int32_t order_key(float z) {
  const int32_t bits = __float_as_int(z);
  return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
}

constexpr int kLogitsBlock = 512;

// Grid: one block per output row r in [0, rows). cond row r of logits, uncond row rows + r (CFG). Writes
// out[r, :] (float32 probabilities; used as the processed-logit scratch first) and bad[r] (1: NaN / +inf processed
// logits or all -inf, the row is no distribution).
template <int BLOCK, class T>
__global__ void __launch_bounds__(BLOCK)
    ProcessLogitsKernel(const T* logits, int64_t rows, int vocab, LogitsProcessing proc, float* out, int8_t* bad) {
  using ReduceF32 = cub::BlockReduce<float, BLOCK>;
  using ReduceF64 = cub::BlockReduce<double, BLOCK>;
  using ReduceInt = cub::BlockReduce<int, BLOCK>;
  __shared__ union {
    typename ReduceF32::TempStorage f32;
    typename ReduceF64::TempStorage f64;
    typename ReduceInt::TempStorage i32;
  } storage;
  __shared__ float s_max;
  __shared__ double s_f64;
  __shared__ int s_int;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.x;
  const T* cond = logits + row * vocab;
  const T* uncond = logits + (rows + row) * vocab;
  float* z_out = out + row * vocab;

  // Pass 1: processed logits, their max and finiteness.
  float local_max = -INFINITY;
  int nonfinite = 0;
  for (int j = tid; j < vocab; j += BLOCK) {
    const double c = static_cast<double>(to_float(cond[j]));
    const double u = proc.cfg ? static_cast<double>(to_float(uncond[j])) : 0.0;
    const float z = logits::processed_logit(c, u, proc.cfg, proc.scale, proc.temperature);
    z_out[j] = z;
    nonfinite += !(z < INFINITY);
    local_max = z > local_max ? z : local_max;
  }
  const float row_max = ReduceF32(storage.f32).Reduce(local_max, [](float a, float b) { return a > b ? a : b; });
  if (tid == 0) s_max = row_max;
  __syncthreads();
  const int bad_count = ReduceInt(storage.i32).Sum(nonfinite);
  if (tid == 0) s_int = bad_count;
  __syncthreads();
  const float z_max = s_max;
  const bool is_bad = s_int > 0 || z_max == -INFINITY;
  __syncthreads();
  const double shift = static_cast<double>(z_max);

  auto block_count = [&](int local) {
    const int total = ReduceInt(storage.i32).Sum(local);
    if (tid == 0) s_int = total;
    __syncthreads();
    const int value = s_int;
    __syncthreads();
    return value;
  };
  auto block_sum = [&](double local) {
    const double total = ReduceF64(storage.f64).Sum(local);
    if (tid == 0) s_f64 = total;
    __syncthreads();
    const double value = s_f64;
    __syncthreads();
    return value;
  };

  // top-k: the largest key t with count(key(z) >= t) >= k (uniform loop: every thread holds lo and hi).
  int64_t threshold_key = INT32_MIN;
  if (proc.top_k > 0 && proc.top_k < vocab) {
    int64_t lo = INT32_MIN, hi = INT32_MAX;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      int local = 0;
      for (int j = tid; j < vocab; j += BLOCK) local += order_key(z_out[j]) >= mid;
      if (block_count(local) >= proc.top_k) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    threshold_key = lo;
  }
  auto weight = [&](int j) {
    const float z = z_out[j];
    return order_key(z) >= threshold_key ? logits::exp_nonpositive(static_cast<double>(z) - shift) : 0.0;
  };
  double local_total = 0.0;
  for (int j = tid; j < vocab; j += BLOCK) local_total += weight(j);
  const double total = block_sum(local_total);

  // top-p: the smallest cut key t over p1 = float32(e / total) whose strictly-above mass is < top_p.
  int64_t cut_key = 0;
  double final_total = total;
  const bool top_p = proc.top_p < 1.0;
  if (top_p) {
    int64_t lo = 0, hi = 0x7F800000;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      double local = 0.0;
      for (int j = tid; j < vocab; j += BLOCK) {
        const float p1 = static_cast<float>(weight(j) / total);
        if (__float_as_int(p1) > mid) local += static_cast<double>(p1);
      }
      if (block_sum(local) < proc.top_p) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    cut_key = lo;
    double local = 0.0;
    for (int j = tid; j < vocab; j += BLOCK) {
      const double e = weight(j);
      if (__float_as_int(static_cast<float>(e / total)) >= cut_key) local += e;
    }
    final_total = block_sum(local);
  }

  // Probabilities (each thread rewrites only the entries it read).
  for (int j = tid; j < vocab; j += BLOCK) {
    double e = weight(j);
    if (top_p && __float_as_int(static_cast<float>(e / total)) < cut_key) e = 0.0;
    z_out[j] = static_cast<float>(e / final_total);
  }
  if (tid == 0) bad[row] = is_bad ? 1 : 0;
}

template <class T>
cudaError_t ProcessLogits(const T* logits, int64_t rows, int vocab, const LogitsProcessing& proc, float* out,
                          int8_t* bad, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  ProcessLogitsKernel<kLogitsBlock, T>
      <<<static_cast<unsigned>(rows), kLogitsBlock, 0, stream>>>(logits, rows, vocab, proc, out, bad);
  return cudaGetLastError();
}

// bad[r] = 1 when probability row r (float32) holds a NaN, inf or negative entry.
__global__ void __launch_bounds__(256) InvalidRowsKernel(const float* probs, int vocab, int8_t* bad) {
  using Reduce = cub::BlockReduce<int, 256>;
  __shared__ typename Reduce::TempStorage storage;
  const float* row = probs + static_cast<int64_t>(blockIdx.x) * vocab;
  int local = 0;
  for (int j = static_cast<int>(threadIdx.x); j < vocab; j += 256) local += !(row[j] >= 0.0f && row[j] < INFINITY);
  const int total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) bad[blockIdx.x] = total > 0 ? 1 : 0;
}

inline cudaError_t InvalidRows(const float* probs, int64_t rows, int vocab, int8_t* bad, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  InvalidRowsKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(probs, vocab, bad);
  return cudaGetLastError();
}

// ---- chain: codes before, fix-up after the verification kernel (one thread per row)

struct ChainLogitsRows {
  int64_t batch;
  int max_drafts;
  int vocab;
  const int32_t* neighbors;  // lantern only, else nullptr
  int k;
};

__global__ void ChainRowCodesKernel(const int64_t* num_drafts, const int64_t* draft, const float* u_accept,
                                    const float* u_sample, ChainLogitsRows rows, int64_t* code, int64_t* safe_n) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows.batch) return;
  const int64_t L = rows.max_drafts;
  const int64_t c = logits::chain_row_status(num_drafts[b], L, draft + b * L, u_accept + b * L, u_sample[b], rows.vocab,
                                           rows.neighbors, rows.k);
  code[b] = c;
  safe_n[b] = c == 0 ? num_drafts[b] : 0;  // a bad row runs as an empty chain (reads nothing it should not)
}

// bad_p [B, L+1], bad_q [B, L] or nullptr: processed rows that are no distribution. Rows read: target rows
// 0..a and the draft rows i <= a, i < n.
__global__ void ChainFixupKernel(const int64_t* code, const int64_t* num_drafts, const int8_t* bad_p,
                                 const int8_t* bad_q, ChainLogitsRows rows, int64_t* accept_len, int64_t* next_token) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows.batch) return;
  const int64_t L = rows.max_drafts;
  int64_t c = code[b];
  if (c == 0) {
    const int64_t a = accept_len[b], n = num_drafts[b];
    for (int64_t i = 0; i <= a && c == 0; ++i) {
      if (bad_p[b * (L + 1) + i] || (bad_q != nullptr && i < n && bad_q[b * L + i])) c = kBadProbability;
    }
  }
  if (c != 0) {
    accept_len[b] = 0;
    next_token[b] = -c;
  }
}

inline cudaError_t ChainRowCodes(const int64_t* num_drafts, const int64_t* draft, const float* u_accept,
                                 const float* u_sample, const ChainLogitsRows& rows, int64_t* code, int64_t* safe_n,
                                 cudaStream_t stream) {
  if (rows.batch == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((rows.batch + 127) / 128);
  ChainRowCodesKernel<<<grid, 128, 0, stream>>>(num_drafts, draft, u_accept, u_sample, rows, code, safe_n);
  return cudaGetLastError();
}

inline cudaError_t ChainFixup(const int64_t* code, const int64_t* num_drafts, const int8_t* bad_p,
                              const int8_t* bad_q, const ChainLogitsRows& rows, int64_t* accept_len,
                              int64_t* next_token, cudaStream_t stream) {
  if (rows.batch == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((rows.batch + 127) / 128);
  ChainFixupKernel<<<grid, 128, 0, stream>>>(code, num_drafts, bad_p, bad_q, rows, accept_len, next_token);
  return cudaGetLastError();
}

// ---- tree

struct TreeLogitsRows {
  int64_t batch;
  int nodes;
  int vocab;
  const int32_t* neighbors;
  int k;
};

__global__ void TreeRowCodesKernel(const int64_t* num_nodes, const int64_t* tokens, const int64_t* parents,
                                   const float* u_accept, const float* u_sample, TreeLogitsRows rows, int64_t* code,
                                   int64_t* safe_num_nodes) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows.batch) return;
  const int64_t M = rows.nodes;
  const int64_t c = logits::tree_row_status(num_nodes[b], M, tokens + b * M, parents + b * M, u_accept + b * M,
                                          u_sample[b], rows.vocab, rows.neighbors, rows.k);
  code[b] = c;
  safe_num_nodes[b] = c == 0 ? num_nodes[b] : 1;  // a bad row runs as a lone root
}

// Rows read by the walk: the root and the accepted nodes (target), and the draft rows of those with children.
__global__ void TreeFixupKernel(const int64_t* code, const int64_t* num_nodes, const int64_t* parents,
                                const int8_t* bad_p, const int8_t* bad_q, TreeLogitsRows rows,
                                int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows.batch) return;
  const int64_t M = rows.nodes, width = M > 1 ? M - 1 : 0;
  int64_t c = code[b];
  if (c == 0) {
    const int64_t count = accept_len[b], n_b = num_nodes[b];
    for (int64_t i = -1; i < count && c == 0; ++i) {
      const int64_t node = i < 0 ? 0 : accepted_nodes[b * width + i];
      bool has_child = false;
      for (int64_t child = node + 1; child < n_b && !has_child; ++child) has_child = parents[b * M + child] == node;
      if (bad_p[b * M + node] || (bad_q != nullptr && has_child && bad_q[b * M + node])) c = kBadProbability;
    }
  }
  if (c != 0) {
    for (int64_t i = 0; i < width; ++i) accepted_nodes[b * width + i] = -1;
    accept_len[b] = 0;
    next_token[b] = -c;
  }
}

inline cudaError_t TreeRowCodes(const int64_t* num_nodes, const int64_t* tokens, const int64_t* parents,
                                const float* u_accept, const float* u_sample, const TreeLogitsRows& rows,
                                int64_t* code, int64_t* safe_num_nodes, cudaStream_t stream) {
  if (rows.batch == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((rows.batch + 127) / 128);
  TreeRowCodesKernel<<<grid, 128, 0, stream>>>(num_nodes, tokens, parents, u_accept, u_sample, rows, code,
                                               safe_num_nodes);
  return cudaGetLastError();
}

inline cudaError_t TreeFixup(const int64_t* code, const int64_t* num_nodes, const int64_t* parents,
                             const int8_t* bad_p, const int8_t* bad_q, const TreeLogitsRows& rows,
                             int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token, cudaStream_t stream) {
  if (rows.batch == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((rows.batch + 127) / 128);
  TreeFixupKernel<<<grid, 128, 0, stream>>>(code, num_nodes, parents, bad_p, bad_q, rows, accepted_nodes, accept_len,
                                            next_token);
  return cudaGetLastError();
}

}  // namespace specdec::gpu
