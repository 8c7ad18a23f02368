// Exact expectation, over all V^T outcomes of a tabular policy, of a spec's per-sample
// gradient (and summed value) as computed by klgrad::evaluate, sampling from pi or from a
// behaviour policy mu, with the gradient's trace variance.
#pragma once

#include "categorical.hpp"
#include "tabular.hpp"
#include "targets.hpp"

#include <klgrad/views/batch.hpp>
#include <klgrad/evaluate.hpp>
#include <klgrad/spec/spec.hpp>

#include <cmath>
#include <cstdio>
#include <string>

namespace klgrad::oracle {

/// Sampled sequences, one per row (B x T tokens).
using sequences = Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Every outcome of a policy with T steps over V tokens, in lexicographic order (row o
/// holds the base-V digits of o, most significant first).
inline sequences all_sequences(Index vocab, Index steps) {
  const Index n = tabular::power(vocab, steps);
  sequences y(n, steps);
  for (Index o = 0; o < n; ++o) {
    Index rest = o;
    for (Index t = steps - 1; t >= 0; --t) {
      y(o, t) = rest % vocab;
      rest /= vocab;
    }
  }
  return y;
}

/// The logit row that produced token t of sequence b.
inline Index token_row(const tabular& shape, const sequences& y, Index b, Index t) {
  Index prefix = 0;
  for (Index j = 0; j < t; ++j) prefix = prefix * shape.vocab + y(b, j);
  return shape.row(t, prefix);
}

/// log p(y_t | h_t) for every token of every sequence (B x T), from per-row log-probs lp.
inline matrix token_log_probs(const tabular& shape, const matrix& lp, const sequences& y) {
  matrix out(y.rows(), y.cols());
  for (Index b = 0; b < y.rows(); ++b)
    for (Index t = 0; t < y.cols(); ++t) out(b, t) = lp(token_row(shape, y, b, t), y(b, t));
  return out;
}

/// The spec a single sample is differentiated with: the same term, weights and level, but
/// agg=token-sum and beta=1. Aggregation and beta only rescale every coefficient of a batch
/// by a constant (for a fixed batch shape), so they change no expectation's direction, and
/// token-sum makes a sample's gradient the plain sum_t c_t * score_t.
inline spec per_sample_spec(spec s) {
  s.aggregation = aggregation::token_sum;
  s.aggregation_constants = {};
  s.beta = 1.0;
  return s;
}

/// Per-sample results for a set of sequences: what klgrad::evaluate gives each token,
/// mapped through the scores of pi's softmax rows.
struct sample_results {
  matrix value;         ///< B x T per-token values from evaluate
  matrix coefficient;   ///< B x T per-token coefficients c_t from evaluate
  vector total_value;   ///< B: sum_t value_t
  matrix gradient;      ///< B x parameters: sum_t c_t * d log pi(y_t|h_t) / dz
  vector log_weight;    ///< B: log probability of the sequence under the sampling policy
};

/// Feeds the sequences to klgrad::evaluate as one padded batch (lp from pi, lr from ref, lb
/// from mu when `behavior` is given, else lb = lp: on-policy weights are 1) with
/// per_sample_spec(s), and maps each token's coefficient through its score e_y - pi_row.
/// Estimators: none (the spec's) or the types <Ev, Eg> of typed evaluate().
template <class... Estimators>
sample_results per_sample(const spec& s, const tabular& pi, const tabular& ref,
                                 const tabular* behavior, const sequences& y) {
  detail::require_same_shape(pi, ref, "ref");
  if (behavior) detail::require_same_shape(pi, *behavior, "behavior");
  const matrix lp_rows = pi.log_probs();
  const matrix lp = token_log_probs(pi, lp_rows, y);
  const matrix lr = token_log_probs(ref, ref.log_probs(), y);
  const matrix lb = behavior ? token_log_probs(pi, behavior->log_probs(), y) : lp;
  sample_results out;
  out.value.resize(y.rows(), y.cols());
  out.coefficient.resize(y.rows(), y.cols());
  klgrad::evaluate<Estimators...>(per_sample_spec(s), klgrad::padded(lp, lr).with_behavior(lb),
                                  out.value, out.coefficient);
  out.total_value = out.value.rowwise().sum();
  out.log_weight = lb.rowwise().sum();
  const matrix pr = lp_rows.array().exp().matrix();
  const Index V = pi.vocab;
  out.gradient = matrix::Zero(y.rows(), pi.parameters());
  for (Index b = 0; b < y.rows(); ++b)
    for (Index t = 0; t < y.cols(); ++t) {
      const Index r = token_row(pi, y, b, t);
      auto g = out.gradient.row(b).segment(r * V, V);
      g -= out.coefficient(b, t) * pr.row(r);
      g(y(b, t)) += out.coefficient(b, t);
    }
  return out;
}

/// Default limit on the working memory of enumerate() and monte_carlo(): 1 GiB.
inline constexpr double default_max_bytes = 1024.0 * 1024.0 * 1024.0;

/// Bytes per_sample() holds for `count` sequences of a policy of V tokens and T steps: per
/// sequence its gradient row and that row centred (2 x parameters doubles), its per-token
/// arrays (tokens, lp, lr, lb, value, coefficient: 6 T) and 3 scalars. Computed in double,
/// so that sizes beyond Index's range compare too.
inline double sample_bytes(double count, Index vocab, Index steps) {
  double rows = 0, power = 1;
  for (Index t = 0; t < steps; ++t, power *= double(vocab)) rows += power;
  return count * (2 * rows * double(vocab) + 6 * double(steps) + 3) * double(sizeof(double));
}

/// Bytes enumerate() needs: sample_bytes() of all V^T outcomes.
inline double enumeration_bytes(Index vocab, Index steps) {
  return sample_bytes(std::pow(double(vocab), double(steps)), vocab, steps);
}

/// A byte count for messages: "1.5 GiB (1610612736 bytes)".
inline std::string byte_text(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double scaled = bytes;
  int u = 0;
  while (scaled >= 1024 && u < 6) scaled /= 1024, ++u;
  if (u == 0) return klgrad::detail::format_number(bytes) + " bytes";
  char short_form[32];
  std::snprintf(short_form, sizeof short_form, "%.3g %s", scaled, units[u]);
  return klgrad::detail::cat(short_form, " (", klgrad::detail::format_number(bytes), " bytes)");
}

/// Raises input_error (reason too_large, value = need, limit = max_bytes) when `who` would
/// need more than max_bytes bytes: refused before allocating, not a std::bad_alloc midway.
inline void require_memory(const char* who, double need, double max_bytes) {
  if (need <= max_bytes) return;
  input_error e(klgrad::detail::cat(who, " needs ", byte_text(need), ", over max_bytes = ",
                                    byte_text(max_bytes),
                                    "; pass a larger max_bytes, or use a smaller policy"),
                input_reason::too_large, "max_bytes");
  e.value = need;
  e.limit = max_bytes;
  klgrad::detail::raise(e);
}

/// An exact expectation over all outcomes.
struct exact_expectation {
  double value = 0;           ///< E[sum_t value_t]
  vector gradient;            ///< E[per-sample gradient]
  double trace_variance = 0;  ///< E||g - E g||^2, the trace of the gradient's covariance
};

/// Exact expectation of the spec's per-sample gradient and summed value, each outcome
/// weighted by its probability under pi (behavior == nullptr, on-policy) or under mu.
/// Raises input_error (too_large) when that needs more than max_bytes (enumeration_bytes).
/// enumerate<Ev, Eg>(...) takes estimator types of your own, as typed evaluate() does.
template <class... Estimators>
exact_expectation enumerate(const spec& s, const tabular& pi, const tabular& ref,
                                   const tabular* behavior = nullptr,
                                   double max_bytes = default_max_bytes) {
  require_memory("enumerate", enumeration_bytes(pi.vocab, pi.steps), max_bytes);
  const sample_results r =
      per_sample<Estimators...>(s, pi, ref, behavior, all_sequences(pi.vocab, pi.steps));
  const vector q = r.log_weight.array().exp().matrix();
  exact_expectation out;
  out.value = q.dot(r.total_value);
  out.gradient = r.gradient.transpose() * q;
  out.trace_variance = q.dot((r.gradient.rowwise() - out.gradient.transpose()).rowwise().squaredNorm());
  return out;
}

}  // namespace klgrad::oracle
