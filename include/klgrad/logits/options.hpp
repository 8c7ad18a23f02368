// The settings and the summary of a full-vocabulary call, the divergences it computes, and
// the size of the workspace a caller may lend it.
#pragma once

#include "../core/aggregation.hpp"
#include "../support/names.hpp"
#include "../views/batch.hpp"
#include "streaming.hpp"

#include <memory>
#include <string_view>
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#include <omp.h>
#endif

namespace klgrad {

/// Which divergence between pi = softmax(z / tau) and ref = softmax(z_ref / tau) a row gets.
enum class divergence {
  reverse_kl,     ///< RKL = KL(pi || ref) = sum pi (log pi - log ref)
  forward_kl,     ///< FKL = KL(ref || pi) = sum ref (log ref - log pi)
  jensen_shannon  ///< JSD_lambda = lambda KL(ref || M) + (1 - lambda) KL(pi || M),
                  ///< M = lambda ref + (1 - lambda) pi
};

/// Each divergence's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<divergence> divergence_names[] = {
    {divergence::reverse_kl, "reverse-kl"},
    {divergence::forward_kl, "forward-kl"},
    {divergence::jensen_shannon, "jensen-shannon"}};

inline constexpr auto all_divergences = detail::values_in(divergence_names);

inline constexpr std::string_view to_string(divergence x) {
  return detail::name_in(divergence_names, x);
}

/// Settings of a full-vocabulary call.
struct logits_options {
  double temperature = 1.0;  ///< tau, dividing both z and z_ref
  /// JSD mixing weight: the reference's share of M (the GKD paper's and TRL's beta);
  /// 0 < lambda < 1. JSD / lambda -> FKL as lambda -> 0, JSD / (1 - lambda) -> RKL as
  /// lambda -> 1.
  double lambda = 0.5;
  /// The rows hold normalised log-probabilities (log_softmax already applied) instead of
  /// logits: the log-sum-exp is skipped (it is 0), temperature must be 1, and gradients are
  /// with respect to the logits those log-probabilities came from.
  bool log_probs = false;
  klgrad::aggregation aggregation = aggregation::token_mean;
  /// L of the -norm modes, the epsilons added to the counts, the scale: as the spec keys
  /// agg-norm, agg-eps, agg-seq-eps and agg-scale (core/aggregation.hpp).
  klgrad::aggregation_constants aggregation_constants;
  double beta = 1.0;
  batch_counts counts;  ///< global N_tokens / B_nonempty (data-parallel shards)
  /// Optional: caller-owned memory of `workspace_size` elements of the type the kernels
  /// compute in (z's scalar type; float for 16-bit z), at least logits_workspace_size<T>(V)
  /// for that type (one slice per OpenMP thread), checked whenever given to
  /// logits_divergence. With it Jensen-Shannon, and forward KL with a gradient, keep each
  /// row's exponentials between their passes instead of computing them again
  /// (uses_workspace); without it (nullptr) they compute them again. Never allocated by the
  /// kernel; reverse KL, the top-k forms and rows of log-probabilities do not use it.
  void* workspace = nullptr;
  Index workspace_size = 0;
};

/// The threads a full-vocabulary call runs its rows on: OpenMP's with KLGRAD_OPENMP, else 1.
inline int logits_threads() {
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// What a full-vocabulary call returns besides the per-row arrays.
struct logits_summary {
  double loss = 0;       ///< beta * sum_rows a_{b,t} * value: this batch's share of the loss
  double mean = 0;       ///< mean value over valid rows
  Index rows = 0;        ///< valid rows
  Index sequences = 0;   ///< non-empty sequences
};

/// Elements of T the workspace (logits_options::workspace) needs for rows of V entries on
/// `threads` threads: per thread both rows' exponentials (2 V) and two shifts per 8 KiB
/// block.
template <class T>
Index logits_workspace_size(Index V, int threads = logits_threads()) {
  return Index(threads) * detail::kept_size<T>(V);
}

/// The same size under its first name, from when Jensen-Shannon alone took the workspace.
template <class T>
Index jensen_shannon_workspace_size(Index V, int threads = logits_threads()) {
  return logits_workspace_size<T>(V, threads);
}

/// Whether divergence d's kernel uses a workspace for rows as opt describes them: forward KL
/// with a gradient and Jensen-Shannon, over logits (rows of log-probabilities have no
/// exponentials worth keeping). Reverse KL's gradient pass reads both rows again whatever it
/// keeps, and ran no faster with kept exponentials (docs/performance.md, "Prefetching").
inline bool uses_workspace(divergence d, const logits_options& opt, bool gradient) {
  if (opt.log_probs) return false;
  return d == divergence::jensen_shannon || (d == divergence::forward_kl && gradient);
}

/// For a caller that owns the workspace of one call (the Python binding, the CLI): memory
/// for it where divergence d uses one, lent to opt (nullptr, and opt untouched, elsewhere).
/// Not zeroed: the kernels write every element they read.
template <class T>
std::unique_ptr<T[]> lend_workspace(divergence d, bool gradient, Index V, logits_options& opt) {
  if (!uses_workspace(d, opt, gradient)) return nullptr;
  const Index n = logits_workspace_size<T>(V);
  std::unique_ptr<T[]> work(new T[std::size_t(n)]);
  opt.workspace = work.get();
  opt.workspace_size = n;
  return work;
}

}  // namespace klgrad
