// The one table of verification methods on the C++ side (host C++ and CUDA, torch-free): method codes,
// the packed-parameter layout of the verify_chain / verify_tree schemas, and the row status codes every
// kernel reports. Mirrored in Python by specdec_kernels/_methods.py (codes, parameter order, defaults);
// semantics: docs/ALGORITHMS.md §3.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPECDEC_HD __host__ __device__
#else
#define SPECDEC_HD
#endif

namespace specdec {

// ---- Method codes (the `int method` argument of verify_chain / verify_tree and the logits / Jacobi ops).
enum Method : int64_t { kExact = 0, kGsd = 1, kLantern = 2, kTypical = 3 };
constexpr int64_t kNumMethods = 4;

// ---- Traits: what a kernel needs to know about a rule. Kernels branch on these, never on a rule's name, so a
// rule is one row of this table plus its acceptance test (verify_math.h). Mirrored by specdec_kernels/_methods.py
// (a test compares the two through the method_info op).
enum class Residual : int64_t {
  kOverQ = 0,        // recovered token ~ max(0, p - q)               (exact, GSD)
  kOverRelaxed = 1,  // recovered token ~ max(0, p~_x - q), p~_x: p with the merged neighbours' mass on x (LANTERN)
  kTarget = 2,       // recovered token ~ p itself; q is never read     (typical)
};
struct MethodTraits {
  bool known;            // a code this build implements (an unknown code is a row error, kBadMethod)
  bool chain;            // verify_chain / verify_chain_logits / jacobi_step take it
  bool tree;             // verify_tree / verify_tree_logits take it
  int64_t num_params;    // length of the packed params list
  bool reads_whole_row;  // the test reads the whole target row (GSD's ranking, typical's entropy)
  bool uses_uniform;     // the test compares u_accept (typical's test is deterministic)
  bool needs_neighbors;  // a neighbour table is required (and checked for the used tokens)
  bool takes_embeddings; // an optional embedding table (GSD's distance filter)
  Residual residual;
};

SPECDEC_HD constexpr MethodTraits method_traits(int64_t method) {
  switch (method) {
    case kExact:   return {true, true, true, 0, false, true, false, false, Residual::kOverQ};
    case kGsd:     return {true, true, false, 4, true, true, false, true, Residual::kOverQ};
    case kLantern: return {true, true, true, 2, false, true, true, false, Residual::kOverRelaxed};
    case kTypical: return {true, true, false, 2, true, false, false, false, Residual::kTarget};
    default:       return {false, false, false, 0, false, false, false, false, Residual::kOverQ};
  }
}

// The rule's name in messages (specdec_kernels._methods spells the same names).
SPECDEC_HD constexpr const char* method_name(int64_t method) {
  switch (method) {
    case kExact: return "exact";
    case kGsd: return "gsd";
    case kLantern: return "lantern";
    case kTypical: return "typical";
    default: return "unknown";
  }
}

SPECDEC_HD constexpr bool chain_supports(int64_t method) { return method_traits(method).chain; }
SPECDEC_HD constexpr bool tree_supports(int64_t method) { return method_traits(method).tree; }
SPECDEC_HD constexpr bool needs_neighbors(int64_t method) { return method_traits(method).needs_neighbors; }

// ---- Packed parameters (`float[] params`, one list whatever the method, so a new parameter never changes
// a schema). Layout by method:
//   exact    []
//   gsd      [h_lo, h_hi, p_thr, d_thr]      rank window (integers >= 0) and the two filter thresholds
//   lantern  [use_lambda, budget]            use_lambda is 0 (budget = delta) or 1 (budget = lam)
//   typical  [epsilon, alpha]                Medusa's typical acceptance thresholds
SPECDEC_HD constexpr int64_t param_count(int64_t method) { return method_traits(method).num_params; }
// The longest params list: kernels carry the raw list in a fixed array and decode it where a method uses it.
constexpr int64_t kMaxParams = 4;
constexpr bool params_fit(int64_t method = 0) {
  return method >= kNumMethods || (param_count(method) <= kMaxParams && params_fit(method + 1));
}
static_assert(params_fit(), "raise kMaxParams to the longest params list");

namespace gsd_param {
enum : int64_t { kHLo = 0, kHHi = 1, kPThr = 2, kDThr = 3 };
}
namespace lantern_param {
enum : int64_t { kUseLambda = 0, kBudget = 1 };
}
namespace typical_param {
enum : int64_t { kEpsilon = 0, kAlpha = 1 };
}

// GSD's parameters, decoded. The window's sides are clipped to [0, vocab - 1] (a side never holds more
// tokens than that), so a huge window costs no more than the whole row.
struct GsdConfig {
  int64_t h_lo;
  int64_t h_hi;
  float p_thr;  // compared in float32, as the reference does
  float d_thr;

  SPECDEC_HD static int64_t clip_side(double h, int64_t vocab) {
    const double cap = vocab > 0 ? static_cast<double>(vocab - 1) : 0.0;
    if (!(h > 0.0)) return 0;  // also NaN
    return h >= cap ? static_cast<int64_t>(cap) : static_cast<int64_t>(h);
  }
  SPECDEC_HD static GsdConfig decode(const double* params, int64_t vocab) {
    return GsdConfig{clip_side(params[gsd_param::kHLo], vocab), clip_side(params[gsd_param::kHHi], vocab),
                     static_cast<float>(params[gsd_param::kPThr]), static_cast<float>(params[gsd_param::kDThr])};
  }
  // From gsd_group_mass's own (integer) arguments.
  SPECDEC_HD static GsdConfig make(int64_t h_lo, int64_t h_hi, double p_thr, double d_thr, int64_t vocab) {
    const int64_t cap = vocab > 0 ? vocab - 1 : 0;
    auto clip = [cap](int64_t h) { return h < 0 ? int64_t{0} : (h > cap ? cap : h); };
    return GsdConfig{clip(h_lo), clip(h_hi), static_cast<float>(p_thr), static_cast<float>(d_thr)};
  }
};

// LANTERN's parameters, decoded: budget = delta (use_lambda false) or lam (use_lambda true).
struct LanternConfig {
  bool use_lambda;
  double budget;

  SPECDEC_HD static LanternConfig decode(const double* params) {
    return LanternConfig{params[lantern_param::kUseLambda] != 0.0, params[lantern_param::kBudget]};
  }
};

// Typical acceptance's parameters, decoded (docs/ALGORITHMS.md §3.11).
struct TypicalConfig {
  double epsilon;
  double alpha;

  SPECDEC_HD static TypicalConfig decode(const double* params) {
    return TypicalConfig{params[typical_param::kEpsilon], params[typical_param::kAlpha]};
  }
};

// ---- Row status codes. A row whose inputs break a structural precondition is not verified: it comes
// back with next_token[b] = -code, accept_len[b] = 0 (verify_tree: accepted_nodes[b, :] = -1). Codes 1-5
// are checked per row before any verification, in this order (the smallest failing code wins); code 6 is
// found on the values the kernel reads while verifying.
//   chain: "used drafts" are i < num_drafts[b]; tree: "valid nodes" are n < num_nodes[b], root included.
enum RowStatus : int64_t {
  kRowOk = 0,
  kBadCount = 1,        // num_drafts[b] outside [0, L] (tree: num_nodes[b] outside [1, M])
  kBadId = 2,           // a used draft / valid node token outside [0, V)
  kBadParent = 3,       // tree: parents[b, 0] != -1, or parents[b, n] outside [0, n) for a valid n > 0
  kBadNeighbor = 4,     // lantern: an id in the neighbour row of a used draft / valid node token outside
                        // [0, V) or equal to that token
  kBadUniform = 5,      // u_accept of a used draft / valid node, or u_sample[b], outside [0, 1] (NaN too);
                        //   cspd_verify: u_accept[i], or u_prop / u_ar of a try it computes
  kBadProbability = 6,  // a probability read is NaN, inf or negative, or the sampled row has zero mass:
                        //   chain: p(x_i), q(x_i) of the tested drafts i <= a (GSD: every entry of the
                        //          ranked rows p[b, i] and q of the group members), and the whole rows
                        //          p[b, a] (and q[b, a] when a draft was rejected) the token is sampled from;
                        //   tree:  every row p[b, n] loaded for a node n on the accepted path and every row
                        //          q[b, n] of a node whose children were tested.
  kBadMethod = 7,       // a method code this kernel does not implement: the glue refuses it first; a kernel
                        // reached with one reports every row instead of guessing a rule
  // The auxiliary ops report code 6 for the values they read: neighbor_table a code whose codebook row
  // holds NaN / inf; lantern_relaxed_mass p(x) and the scanned neighbours' p; gsd_group_mass the ranked row
  // p, q of the group members and the embedding rows whose distance is computed; cspd_verify a NaN / inf
  // x, mu_q, mu_p, s_q, s_p or a sigma that is not finite and > 0.
};

// The status pass combines per-element codes by keeping the smallest non-zero one.
SPECDEC_HD constexpr int64_t first_failure(int64_t a, int64_t b) {
  return a == kRowOk ? b : (b == kRowOk ? a : (a < b ? a : b));
}

}  // namespace specdec
