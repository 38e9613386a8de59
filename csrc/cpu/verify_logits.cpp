// Fused CPU logits -> verification (verify_chain_logits, verify_tree_logits): per batch row, each logits row the
// verification reads is processed (CFG, temperature, top-k, top-p, softmax; csrc/verify_logits_math.h) into one
// thread-local float64 row and verified at once; rows past the first rejection are never read, and no [B, L, V]
// probability tensor exists. Semantics: specdec_kernels/reference/verify_logits.py (process_logits followed by
// verify_chain / verify_tree). Bad rows come back as next_token = -code (codes of the kernel contract, §3).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../verify_logits_checks.h"
#include "../verify_logits_math.h"
#include "verify_common.h"

namespace specdec::cpu {
namespace {

using logits::exp_nonpositive;
using logits::LogitsShape;
using logits::MethodParams;

// ------------------------------------------------------------------------------------------ vectorised exp

#if defined(__x86_64__) && defined(__GNUC__)
typedef double Vec4d __attribute__((vector_size(32)));
typedef long long Vec4i __attribute__((vector_size(32)));

// exp_nonpositive on four lanes (same steps; AVX2 + FMA): about 6x faster than a scalar std::exp loop.
__attribute__((target("avx2,fma"))) void exp_in_place_avx2(double* x, int64_t n) {
  int64_t i = 0;
  const Vec4d shift = Vec4d{} + logits::kExpShift, low = Vec4d{} + logits::kExpLowest;
  for (; i + 4 <= n; i += 4) {
    Vec4d v;
    __builtin_memcpy(&v, x + i, sizeof v);
    const Vec4i in_range = v >= low;
    const Vec4d xc = in_range ? v : low;
    const Vec4d shifted = xc * logits::kExpLog2e + shift;
    const Vec4d kd = shifted - shift;
    const Vec4d r = (xc - kd * logits::kExpLn2Hi) - kd * logits::kExpLn2Lo;
    const Vec4d poly = logits::exp_taylor(r);
    const Vec4i k = (Vec4i)shifted - (Vec4i)shift;
    const Vec4d scale = (Vec4d)((k + 1023) << 52);
    v = (Vec4d)((Vec4i)(poly * scale) & in_range);
    __builtin_memcpy(x + i, &v, sizeof v);
  }
  for (; i < n; ++i) x[i] = exp_nonpositive(x[i]);
}

typedef float Vec4f __attribute__((vector_size(16)));
typedef int Vec4i32 __attribute__((vector_size(16)));

// Processed logits of float32 rows, four at a time (the steps of logits::processed_logit in float64; the FMA this
// target contracts u + s * (c - u) into changes z only on a float32 rounding boundary), with their max and
// finiteness. Returns false when a processed logit is NaN or +inf.
template <bool CFG, bool DIVIDE>
__attribute__((target("avx2,fma"))) bool processed_row_avx2(const float* cond, const float* uncond, int64_t n,
                                                            double scale, double temperature, float* z,
                                                            float* z_max) {
  const float inf = std::numeric_limits<float>::infinity();
  Vec4f lane_max = Vec4f{} - inf;
  Vec4i32 lane_ok = Vec4i32{} - 1;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    Vec4f cf;
    __builtin_memcpy(&cf, cond + i, sizeof cf);
    Vec4d c = __builtin_convertvector(cf, Vec4d);
    if constexpr (CFG) {
      Vec4f uf;
      __builtin_memcpy(&uf, uncond + i, sizeof uf);
      const Vec4d u = __builtin_convertvector(uf, Vec4d);
      c = u + scale * (c - u);
    }
    if constexpr (DIVIDE) c = c / temperature;
    const Vec4f zf = __builtin_convertvector(c, Vec4f);
    __builtin_memcpy(z + i, &zf, sizeof zf);
    lane_ok &= zf < inf;  // false for NaN and +inf
    lane_max = zf > lane_max ? zf : lane_max;
  }
  float best = -inf;
  bool ok = true;
  for (int l = 0; l < 4; ++l) {
    best = lane_max[l] > best ? lane_max[l] : best;
    ok &= lane_ok[l] != 0;
  }
  for (; i < n; ++i) {
    const float zi = logits::processed_logit(cond[i], CFG ? uncond[i] : 0.0, CFG, scale, temperature);
    z[i] = zi;
    ok &= zi < inf;
    best = zi > best ? zi : best;
  }
  *z_max = best;
  return ok;
}

bool processed_row_fast(const float* cond, const float* uncond, int64_t n, double scale, double temperature,
                        float* z, float* z_max) {
  const bool divide = temperature != 1.0;  // x / 1 == x: skip the division
  if (uncond) {
    return divide ? processed_row_avx2<true, true>(cond, uncond, n, scale, temperature, z, z_max)
                  : processed_row_avx2<true, false>(cond, uncond, n, scale, temperature, z, z_max);
  }
  return divide ? processed_row_avx2<false, true>(cond, uncond, n, scale, temperature, z, z_max)
                : processed_row_avx2<false, false>(cond, uncond, n, scale, temperature, z, z_max);
}

const bool kHasAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
bool processed_row_fast(const float*, const float*, int64_t, double, double, float*, float*) { return false; }
const bool kHasAvx2Fma = false;
void exp_in_place_avx2(double*, int64_t) {}
#endif

void exp_in_place(double* x, int64_t n) {
  if (kHasAvx2Fma) return exp_in_place_avx2(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = exp_nonpositive(x[i]);
}

// ------------------------------------------------------------------------------------------ row processing

struct Processing {
  bool cfg;
  double scale;
  double temperature;  // clamped
  int64_t top_k;       // 0 = off
  double top_p;        // >= 1 = off
};

Processing make_processing(std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p) {
  return {cfg_scale.has_value(), cfg_scale.value_or(0.0), std::max(temperature, logits::kMinTemperature), top_k,
          top_p};
}

// One processed row: weights e (exp(z - max) over the kept tokens, 0 elsewhere) and their float64 total;
// probability(j) = float32(e[j] / total), exactly the reference's rounding.
struct ProcessedRow {
  std::vector<float> z, selected, kept_probs;
  std::vector<int64_t> kept_ids;
  std::vector<double> e;
  double total = 0.0;

  float prob(int64_t j) const { return static_cast<float>(e[j] / total); }

  // Processes one row; false when the result would not be a distribution (NaN / +inf processed logits, or
  // every logit -inf): the caller reports row code 6.
  template <typename T>
  bool load(const T* cond, const T* uncond, int64_t vocab, const Processing& proc) {
    z.resize(vocab);
    e.resize(vocab);
    float z_max = -std::numeric_limits<float>::infinity();
    bool finite = true;
    const bool cfg = uncond != nullptr;  // draft logits of B rows are not guided even when the target is
    if (std::is_same_v<T, float> && kHasAvx2Fma) {
      finite = processed_row_fast(reinterpret_cast<const float*>(cond), reinterpret_cast<const float*>(uncond),
                                  vocab, proc.scale, proc.temperature, z.data(), &z_max);
    } else {
      for (int64_t j = 0; j < vocab; ++j) {
        const double c = static_cast<double>(static_cast<float>(cond[j]));
        const double u = cfg ? static_cast<double>(static_cast<float>(uncond[j])) : 0.0;
        const float zj = logits::processed_logit(c, u, cfg, proc.scale, proc.temperature);
        z[j] = zj;
        finite &= zj < std::numeric_limits<float>::infinity();  // false for NaN and +inf
        z_max = zj > z_max ? zj : z_max;
      }
    }
    if (!finite || z_max == -std::numeric_limits<float>::infinity()) return false;
    const double shift = static_cast<double>(z_max);
    if (proc.top_k > 0 && proc.top_k < vocab) {
      // The k-th largest value (ties at it kept, as torch.topk thresholding); then exp only over the kept ones.
      selected.assign(z.begin(), z.end());
      std::nth_element(selected.begin(), selected.begin() + (proc.top_k - 1), selected.end(), std::greater<float>());
      const float threshold = selected[proc.top_k - 1];
      std::fill(e.begin(), e.end(), 0.0);
      kept_ids.clear();
      for (int64_t j = 0; j < vocab; ++j) {
        if (z[j] >= threshold) kept_ids.push_back(j);
      }
      total = 0.0;
      for (int64_t j : kept_ids) {
        e[j] = exp_nonpositive(static_cast<double>(z[j]) - shift);
        total += e[j];
      }
    } else {
      for (int64_t j = 0; j < vocab; ++j) e[j] = static_cast<double>(z[j]) - shift;
      exp_in_place(e.data(), vocab);
      kept_ids.clear();
      // Four interleaved float64 accumulators (a sequential sum is bound by add latency); the order differs from
      // the reference's only at float64 rounding level.
      double lane[4] = {0.0, 0.0, 0.0, 0.0};
      int64_t j = 0;
      for (; j + 4 <= vocab; j += 4) {
        for (int l = 0; l < 4; ++l) lane[l] += e[j + l];
      }
      for (; j < vocab; ++j) lane[0] += e[j];
      total = (lane[0] + lane[1]) + (lane[2] + lane[3]);
    }
    if (proc.top_p < 1.0) apply_top_p(vocab, proc);
    return true;
  }

  // Top-p on p1 = float32(e / total): keep j iff the float64 mass of strictly more probable tokens, summed
  // sequentially from the most probable, is < top_p (the reference's rule, tie groups kept whole).
  void apply_top_p(int64_t vocab, const Processing& proc) {
    const bool sparse = proc.top_k > 0 && proc.top_k < vocab;
    kept_probs.clear();
    if (sparse) {
      for (int64_t j : kept_ids) kept_probs.push_back(prob(j));
    } else {
      kept_probs.resize(vocab);
      for (int64_t j = 0; j < vocab; ++j) kept_probs[j] = prob(j);
    }
    std::sort(kept_probs.begin(), kept_probs.end(), std::greater<float>());
    double before = 0.0;
    float cut = kept_probs.front();
    for (size_t i = 0; i < kept_probs.size();) {
      if (!(before < proc.top_p)) break;
      const float value = kept_probs[i];
      cut = value;
      for (; i < kept_probs.size() && kept_probs[i] == value; ++i) before += static_cast<double>(value);
    }
    auto drop = [&](int64_t j) {
      if (prob(j) < cut) e[j] = 0.0;
    };
    if (sparse) {
      for (int64_t j : kept_ids) drop(j);
    } else {
      for (int64_t j = 0; j < vocab; ++j) drop(j);
    }
    double kept_total = 0.0;
    for (int64_t j = 0; j < vocab; ++j) kept_total += e[j];
    total = kept_total;
  }
};

// Rows per task of at::parallel_for: a row costs about V element passes, and below ~2^16 element passes per task
// the fork/join (and, on a loaded machine, waiting for a descheduled worker) costs more than it saves.
int64_t row_grain(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(vocab, 1)); }

bool valid_prob(float v) { return valid_probability(v); }  // finite and >= 0 (verify_math.h)

// ------------------------------------------------------------------------------------------ chain

struct ChainInputs {
  const int64_t* draft;
  const float* u_accept;
  const float* u_sample;
  const int64_t* num_drafts;
  const float* draft_probs;  // (B, L, V) float32 or null
  int64_t batch, drafts, vocab;
  bool draft_cfg;  // draft_logits hold a doubled batch
};

template <typename T>
void verify_chain_logits_rows(const T* logits, const T* draft_logits, const ChainInputs& in, const Processing& proc,
                              const MethodParams& mp, int64_t* accept_len, int64_t* next_token) {
  const int64_t batch = in.batch, drafts = in.drafts, vocab = in.vocab, slots = drafts + 1;
  at::parallel_for(0, batch, row_grain(vocab), [&](int64_t begin, int64_t end) {
    ProcessedRow p, q;
    std::vector<int64_t> above, below;
    std::vector<double> residual, block_ends;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t code =
          logits::chain_row_status(in.num_drafts[b], in.drafts, in.draft + b * in.drafts, in.u_accept + b * in.drafts,
                                   in.u_sample[b], in.vocab, mp.method == kLantern ? mp.neighbors : nullptr, mp.k);
      if (code != 0) {
        accept_len[b] = 0;
        next_token[b] = -code;
        continue;
      }
      auto load_p = [&](int64_t i) {
        const T* cond = logits + (b * slots + i) * vocab;
        return p.load(cond, proc.cfg ? cond + batch * slots * vocab : static_cast<const T*>(nullptr), vocab, proc);
      };
      const int64_t n = in.num_drafts[b];
      const bool has_q = draft_logits != nullptr || in.draft_probs != nullptr;
      const float* probs_row = nullptr;  // q row a of draft_probs
      auto q_at = [&](int64_t j) -> float { return draft_logits ? q.prob(j) : probs_row[j]; };
      auto p_at = [&](int64_t j) { return p.prob(j); };
      bool bad = false;
      int64_t a = 0, merged = 0;
      for (; a < n; ++a) {
        if (!load_p(a)) {
          bad = true;
          break;
        }
        if (draft_logits) {
          const T* cond = draft_logits + (b * drafts + a) * vocab;
          const T* uncond = in.draft_cfg ? cond + batch * drafts * vocab : nullptr;
          if (!q.load(cond, uncond, vocab, proc)) {
            bad = true;
            break;
          }
        } else if (in.draft_probs) {
          probs_row = in.draft_probs + (b * drafts + a) * vocab;
        }
        const int64_t x = in.draft[b * drafts + a];
        const double u = in.u_accept[b * drafts + a];
        const float qx_f = has_q ? q_at(x) : 1.0f;
        if (!valid_prob(qx_f)) {
          bad = true;
          break;
        }
        const double qx = qx_f;
        bool pass;
        if (mp.method == kExact) {
          pass = exact_accepts(u, qx, static_cast<double>(p_at(x)));
        } else if (mp.method == kGsd) {
          const GroupMass g = group_mass(p_at, has_q ? &q_at : static_cast<decltype(q_at)*>(nullptr), vocab, x,
                                         mp.gsd, mp.embeddings, mp.emb_dim, above, below);
          if (!g.values_ok) {  // a draft_probs entry of a group member
            bad = true;
            break;
          }
          pass = group_accepts(u, g.q, g.p);
        } else {
          auto pd = [&](int64_t j) { return static_cast<double>(p_at(j)); };
          const double p_tilde = relaxed_mass(pd, x, mp.neighbors + x * mp.k, mp.k, mp.lantern, &merged);
          pass = lantern_accepts(u, qx, p_tilde);
        }
        if (!pass) break;
      }
      // The q row a of draft_probs is read whole by the residual: its values are checked (code 6).
      if (!bad && a < n && in.draft_probs) {
        for (int64_t j = 0; j < vocab && !bad; ++j) bad = !valid_prob(probs_row[j]);
      }
      if (!bad && a == n) bad = !load_p(n);  // bonus row
      if (bad) {
        accept_len[b] = 0;
        next_token[b] = -kBadProbability;
        continue;
      }
      auto target_w = [&](int64_t j) { return static_cast<double>(p_at(j)); };
      int64_t token = -1;
      if (a < n) {  // recovered: max(0, p~_x - q), p~_x = p with LANTERN's merged mass moved onto x
        const int64_t x = in.draft[b * drafts + a];
        if (merged == 0) {
          if (has_q) {
            auto w = [&](int64_t j) { return std::max(0.0, target_w(j) - static_cast<double>(q_at(j))); };
            token = inverse_cdf(vocab, w, in.u_sample[b], block_ends);
          } else {
            auto w = [&](int64_t j) { return j == x ? std::max(0.0, target_w(j) - 1.0) : target_w(j); };
            token = inverse_cdf(vocab, w, in.u_sample[b], block_ends);
          }
        } else {
          residual.resize(vocab);
          const int32_t* moved = mp.neighbors + x * mp.k;
          double moved_onto_x = 0.0;
          for (int64_t m = 0; m < merged; ++m) moved_onto_x += target_w(moved[m]);
          for (int64_t j = 0; j < vocab; ++j) residual[j] = target_w(j);
          for (int64_t m = 0; m < merged; ++m) residual[moved[m]] = 0.0;
          residual[x] += moved_onto_x;
          for (int64_t j = 0; j < vocab; ++j) {
            const double qj = has_q ? static_cast<double>(q_at(j)) : (j == x ? 1.0 : 0.0);
            residual[j] = std::max(0.0, residual[j] - qj);
          }
          token = inverse_cdf(vocab, [&](int64_t j) { return residual[j]; }, in.u_sample[b], block_ends);
        }
      }
      if (token < 0) token = inverse_cdf(vocab, target_w, in.u_sample[b], block_ends);  // bonus, or zero residual
      next_token[b] = token;
      accept_len[b] = a;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> verify_chain_logits_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_logits_in,
    const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& draft_in, const at::Tensor& u_accept_in,
    const at::Tensor& u_sample_in, const at::Tensor& num_drafts_in, std::optional<double> cfg_scale,
    double temperature, int64_t top_k, double top_p, int64_t method, const std::optional<at::Tensor>& neighbors_in,
    const std::optional<at::Tensor>& embeddings_in, c10::ArrayRef<double> params) {
  MethodParams mp;
  const LogitsShape shape =
      logits::check_chain_logits(logits_in, draft_logits_in, draft_probs_in, draft_in, u_accept_in, u_sample_in,
                                 num_drafts_in, cfg_scale, temperature, top_k, top_p, method, params, neighbors_in,
                                 embeddings_in, &mp);
  const int64_t batch = shape.batch, drafts = shape.slots - 1, vocab = shape.vocab;
  const bool draft_cfg = shape.draft_cfg;
  const at::Tensor logits = logits_in.contiguous(), draft = draft_in.contiguous(),
                   u_accept = u_accept_in.contiguous(), u_sample = u_sample_in.contiguous(),
                   num_drafts = num_drafts_in.contiguous();
  const at::Tensor draft_logits = draft_logits_in ? draft_logits_in->contiguous() : at::Tensor();
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor neighbors = mp.method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  const at::Tensor embeddings = (mp.method == kGsd && embeddings_in) ? embeddings_in->contiguous() : at::Tensor();
  if (neighbors.defined()) {
    mp.neighbors = neighbors.data_ptr<int32_t>();
    mp.k = neighbors.size(1);
  }
  if (embeddings.defined()) {
    mp.embeddings = embeddings.data_ptr<float>();
    mp.emb_dim = embeddings.size(1);
  }
  at::Tensor accept_len = at::empty({batch}, draft.options());
  at::Tensor next_token = at::empty({batch}, draft.options());
  const ChainInputs in{draft.data_ptr<int64_t>(),
                       u_accept.data_ptr<float>(),
                       u_sample.data_ptr<float>(),
                       num_drafts.data_ptr<int64_t>(),
                       draft_probs.defined() ? draft_probs.data_ptr<float>() : nullptr,
                       batch,
                       drafts,
                       vocab,
                       draft_cfg};
  const Processing proc = make_processing(cfg_scale, temperature, top_k, top_p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_chain_logits_cpu", [&] {
    verify_chain_logits_rows<scalar_t>(logits.data_ptr<scalar_t>(),
                                       draft_logits.defined() ? draft_logits.data_ptr<scalar_t>() : nullptr, in,
                                       proc, mp, accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>());
  });
  return {accept_len, next_token};
}

// ------------------------------------------------------------------------------------------ tree

struct TreeInputs {
  const int64_t* tokens;
  const int64_t* parents;
  const float* u_accept;
  const float* u_sample;
  const int64_t* num_nodes;
  const float* draft_probs;  // (B, M, V) float32 or null
  int64_t batch, nodes, vocab;
};

// The walk of reference.verify_tree over rows processed on demand: r is the current normalised float64
// target row, loaded from the processed logits of the node the walk stands on.
template <typename T>
void verify_tree_logits_rows(const T* logits, const TreeInputs& in, const Processing& proc, const MethodParams& mp,
                             int64_t* accepted_nodes, int64_t* accept_len, int64_t* next_token) {
  const int64_t batch = in.batch, m = in.nodes, vocab = in.vocab;
  const int64_t width = std::max<int64_t>(m - 1, 0);
  at::parallel_for(0, batch, row_grain(vocab), [&](int64_t begin, int64_t end) {
    ProcessedRow p;
    std::vector<double> r(vocab), q_prime(vocab), block_ends;
    std::vector<int64_t> tried;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t code =
          logits::tree_row_status(in.num_nodes[b], m, in.tokens + b * m, in.parents + b * m, in.u_accept + b * m,
                                  in.u_sample[b], vocab, mp.method == kLantern ? mp.neighbors : nullptr, mp.k);
      if (code != 0) {
        accept_len[b] = 0;
        next_token[b] = -code;
        continue;
      }
      const int64_t n_b = in.num_nodes[b];
      const int64_t* par = in.parents + b * m;
      const int64_t* tok = in.tokens + b * m;
      auto load_p = [&](int64_t node) {
        const T* cond = logits + (b * m + node) * vocab;
        if (!p.load(cond, proc.cfg ? cond + batch * m * vocab : static_cast<const T*>(nullptr), vocab, proc)) {
          return false;
        }
        for (int64_t j = 0; j < vocab; ++j) r[j] = static_cast<double>(p.prob(j));
        return true;
      };
      int64_t cur = 0, count = 0;
      bool bad = !load_p(0);
      while (!bad) {
        bool has_kids = false, accepted = false;
        tried.clear();
        for (int64_t c = cur + 1; c < n_b && !accepted && !bad; ++c) {
          if (par[c] != cur) continue;
          has_kids = true;
          const int64_t t = tok[c];
          if (std::find(tried.begin(), tried.end(), t) != tried.end()) continue;
          double q_t = 1.0;
          if (in.draft_probs) {  // q' = q[cur] without earlier-tried tokens, renormalised (zero if nothing is left)
            const float* qr = in.draft_probs + (b * m + cur) * vocab;
            for (int64_t j = 0; j < vocab; ++j) {
              bad |= !valid_prob(qr[j]);
              q_prime[j] = static_cast<double>(qr[j]);
            }
            if (bad) break;
            for (int64_t j : tried) q_prime[j] = 0.0;
            double total = 0.0;
            for (int64_t j = 0; j < vocab; ++j) total += q_prime[j];
            for (int64_t j = 0; j < vocab; ++j) q_prime[j] = total > 0.0 ? q_prime[j] / total : 0.0;
            q_t = q_prime[t];
          }
          tried.push_back(t);
          const double u = in.u_accept[b * m + c];
          int64_t merged = 0;
          bool ok;
          if (mp.method == kLantern) {
            auto rd = [&](int64_t j) { return r[j]; };
            const double p_tilde = relaxed_mass(rd, t, mp.neighbors + t * mp.k, mp.k, mp.lantern, &merged);
            ok = lantern_accepts(u, q_t, p_tilde);
          } else {
            ok = exact_accepts(u, q_t, r[t]);
          }
          if (ok) {
            accepted_nodes[b * width + count++] = c;
            cur = c;
            bad = !load_p(c);
            accepted = true;
            break;
          }
          if (merged > 0) {  // r~: move the merged neighbours' mass onto t
            const int32_t* row = mp.neighbors + t * mp.k;
            double gained = 0.0;
            for (int64_t i = 0; i < merged; ++i) gained += r[row[i]];
            r[t] += gained;
            for (int64_t i = 0; i < merged; ++i) r[row[i]] = 0.0;
          }
          if (in.draft_probs) {
            for (int64_t j = 0; j < vocab; ++j) r[j] = std::max(0.0, r[j] - q_prime[j]);
          } else {
            r[t] = 0.0;
          }
          double total = 0.0;
          for (int64_t j = 0; j < vocab; ++j) total += r[j];
          if (total > 0.0) {
            for (int64_t j = 0; j < vocab; ++j) r[j] /= total;
          } else {
            bad = !load_p(cur);
          }
        }
        if (bad) break;
        if (accepted) continue;
        // Bonus (no children: r is still p[cur]) or recovered (r is the residual).
        (void)has_kids;
        next_token[b] = inverse_cdf(vocab, [&](int64_t j) { return r[j]; }, in.u_sample[b], block_ends);
        break;
      }
      if (bad) {
        for (int64_t i = 0; i < width; ++i) accepted_nodes[b * width + i] = -1;
        accept_len[b] = 0;
        next_token[b] = -kBadProbability;
        continue;
      }
      accept_len[b] = count;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_logits_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& draft_probs_in, const at::Tensor& tokens_in,
    const at::Tensor& parents_in, const at::Tensor& u_accept_in, const at::Tensor& u_sample_in,
    const at::Tensor& num_nodes_in, std::optional<double> cfg_scale, double temperature, int64_t top_k, double top_p,
    int64_t method, const std::optional<at::Tensor>& neighbors_in, c10::ArrayRef<double> params) {
  MethodParams mp;
  const LogitsShape shape = logits::check_tree_logits(logits_in, draft_probs_in, tokens_in, parents_in, u_accept_in,
                                                      u_sample_in, num_nodes_in, cfg_scale, temperature, top_k,
                                                      top_p, method, params, neighbors_in, &mp);
  const int64_t batch = shape.batch, m = shape.slots, vocab = shape.vocab;
  const at::Tensor logits = logits_in.contiguous(), tokens = tokens_in.contiguous(),
                   parents = parents_in.contiguous(), u_accept = u_accept_in.contiguous(),
                   u_sample = u_sample_in.contiguous(), num_nodes = num_nodes_in.contiguous();
  const at::Tensor draft_probs = draft_probs_in ? draft_probs_in->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor neighbors = mp.method == kLantern ? neighbors_in->contiguous() : at::Tensor();
  if (neighbors.defined()) {
    mp.neighbors = neighbors.data_ptr<int32_t>();
    mp.k = neighbors.size(1);
  }
  at::Tensor accepted_nodes = at::full({batch, std::max<int64_t>(m - 1, 0)}, -1, tokens.options());
  at::Tensor accept_len = at::empty({batch}, tokens.options());
  at::Tensor next_token = at::empty({batch}, tokens.options());
  const TreeInputs in{tokens.data_ptr<int64_t>(),
                      parents.data_ptr<int64_t>(),
                      u_accept.data_ptr<float>(),
                      u_sample.data_ptr<float>(),
                      num_nodes.data_ptr<int64_t>(),
                      draft_probs.defined() ? draft_probs.data_ptr<float>() : nullptr,
                      batch,
                      m,
                      vocab};
  const Processing proc = make_processing(cfg_scale, temperature, top_k, top_p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_tree_logits_cpu", [&] {
    verify_tree_logits_rows<scalar_t>(logits.data_ptr<scalar_t>(), in, proc, mp, accepted_nodes.data_ptr<int64_t>(),
                                      accept_len.data_ptr<int64_t>(), next_token.data_ptr<int64_t>());
  });
  return {accepted_nodes, accept_len, next_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec_kernels, CPU, m) {
  m.impl("verify_chain_logits", &verify_chain_logits_cpu);
  m.impl("verify_tree_logits", &verify_tree_logits_cpu);
}

}  // namespace specdec::cpu
