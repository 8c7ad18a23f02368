// The tabular autoregressive policy: T steps over a vocabulary of V tokens with one softmax
// logit row per prefix (1 + V + ... + V^(T-1) rows), its parameter ordering, and its
// prefix (state) distributions.
#pragma once

#include "categorical.hpp"

#include <klgrad/support/errors.hpp>

#include <cmath>
#include <random>
#include <string>
#include <utility>

namespace klgrad::oracle {

/// Rows are ordered step by step, and within step t by the prefix (y_1 .. y_t) read as a
/// base-V number (lexicographic order); the parameter vector is the row-major
/// concatenation of the rows, so parameter (row, token) has index row * V + token.
/// A categorical policy is the case T = 1 (one row).
struct tabular {
  Index vocab = 0, steps = 0;
  matrix logits;  ///< rows() x vocab

  /// V^t.
  static Index power(Index v, Index t) {
    Index p = 1;
    for (Index i = 0; i < t; ++i) p *= v;
    return p;
  }
  /// Number of logit rows of a policy with T steps: 1 + V + ... + V^(T-1).
  static Index rows_for(Index v, Index t) {
    Index n = 0;
    for (Index i = 0; i < t; ++i) n += power(v, i);
    return n;
  }
  Index rows() const { return rows_for(vocab, steps); }
  Index parameters() const { return rows() * vocab; }
  Index outcomes() const { return power(vocab, steps); }
  /// First row of step t (0-based): 1 + V + ... + V^(t-1).
  Index row_offset(Index t) const { return rows_for(vocab, t); }
  /// The row of step t after the prefix whose base-V value is `prefix`.
  Index row(Index t, Index prefix) const { return row_offset(t) + prefix; }

  tabular() = default;
  /// Checks the shape: vocab >= 2, steps >= 1, logits rows_for(V, T) x V, all finite.
  tabular(Index v, Index t, matrix z) : vocab(v), steps(t), logits(std::move(z)) {
    if (v < 2 || t < 1)
      detail::raise<input_error>(detail::cat("tabular policy needs vocab >= 2 and steps >= 1, got vocab ",
                                             v, " and steps ", t));
    if (logits.rows() != rows() || logits.cols() != vocab)
      detail::raise<shape_error>(detail::cat("tabular policy with vocab ", v, " and steps ", t,
                                             " needs ", rows(), "x", v, " logits, got ",
                                             logits.rows(), "x", logits.cols()));
    for (Index r = 0; r < logits.rows(); ++r)
      for (Index i = 0; i < vocab; ++i)
        if (!std::isfinite(logits(r, i)))
          detail::raise<input_error>(detail::cat("logit row ", r, ", token ", i, " is ",
                                                 logits(r, i), ", not finite"));
  }

  /// The policy with parameter vector theta (ordered as parameters()).
  static tabular from_parameters(Index v, Index t, const Eigen::Ref<const vector>& theta) {
    matrix z(rows_for(v, t), v);
    Eigen::Map<vector>(z.data(), z.size()) = theta;
    return tabular(v, t, std::move(z));
  }
  vector parameter_vector() const { return Eigen::Map<const vector>(logits.data(), logits.size()); }

  /// Logits drawn i.i.d. normal with standard deviation `scale`.
  template <class Rng>
  static tabular random(Index v, Index t, Rng& rng, double scale = 1.0) {
    std::normal_distribution<double> n(0.0, scale);
    matrix z(rows_for(v, t), v);
    for (Index i = 0; i < z.size(); ++i) z.data()[i] = n(rng);
    return tabular(v, t, std::move(z));
  }

  /// log softmax of every row.
  matrix log_probs() const {
    matrix out(logits.rows(), vocab);
    for (Index r = 0; r < logits.rows(); ++r) out.row(r) = log_softmax(logits.row(r).transpose()).transpose();
    return out;
  }
};

/// The probability of reaching each row's prefix (the state distribution) under the policy
/// with per-row log-probabilities lp (tabular::log_probs()); the root has probability 1.
inline vector state_distribution(const tabular& shape, const matrix& lp) {
  vector d(shape.rows());
  d(0) = 1.0;
  for (Index t = 1; t < shape.steps; ++t)
    for (Index prefix = 0; prefix < tabular::power(shape.vocab, t); ++prefix) {
      const Index parent = shape.row(t - 1, prefix / shape.vocab);
      d(shape.row(t, prefix)) = d(parent) * std::exp(lp(parent, prefix % shape.vocab));
    }
  return d;
}

inline vector state_distribution(const tabular& p) { return state_distribution(p, p.log_probs()); }

}  // namespace klgrad::oracle
