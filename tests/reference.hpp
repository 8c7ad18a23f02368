// An independent, deliberately plain implementation of evaluate()'s semantics, written from
// the surrogate losses (not from the kernel): one token at a time, in double, straight
// loops. The kernel tests compare against it.
#pragma once

#include <klgrad/estimators.hpp>
#include <klgrad/importance.hpp>
#include <klgrad/spec.hpp>

#include <vector>

namespace klgrad::test {

struct token_input {
  double lp, lr, lb;
  bool valid;
};

struct reference_result {
  std::vector<std::vector<double>> value, coef;
  double loss = 0;
};

/// Batch is a list of sequences of tokens; counts < 0 mean "local".
inline reference_result reference(const spec& s, const std::vector<std::vector<token_input>>& batch,
                                  long global_tokens = -1, long global_sequences = -1) {
  reference_result out;
  long tokens = 0, sequences = 0;
  for (const auto& seq : batch) {
    long n = 0;
    for (const auto& t : seq) n += t.valid;
    tokens += n;
    sequences += n > 0;
  }
  if (global_tokens > 0) tokens = global_tokens;
  if (global_sequences > 0) sequences = global_sequences;
  const bool in = s.term.where != placement::as_loss, as = s.term.where != placement::in_reward;
  const estimator ea = s.term.value_estimator, eb = s.term.gradient_estimator;
  for (const auto& seq : batch) {
    const std::size_t T = seq.size();
    std::vector<double> value(T, 0.0), coef(T, 0.0), k(T, 0.0), used(T, 1.0), dused(T, 0.0);
    long n = 0;
    double S = 0, K = 0;
    for (std::size_t t = 0; t < T; ++t) {
      if (!seq[t].valid) continue;
      ++n;
      const double st = seq[t].lp - seq[t].lr;
      S += st;
      k[t] = klgrad::value(ea, st);
      K += k[t];
      if (s.importance.active()) {
        const auto w = weigh(seq[t].lp - seq[t].lb, s.importance);
        used[t] = w.used;
        dused[t] = w.gradient;
      }
    }
    if (n == 0) {
      out.value.push_back(value);
      out.coef.push_back(coef);
      continue;
    }
    double a = 0;
    switch (s.aggregation) {
      case aggregation::token_mean: a = 1.0 / double(tokens); break;
      case aggregation::token_sum: a = 1.0; break;
      case aggregation::seq_mean_token_sum: a = 1.0 / double(sequences); break;
      case aggregation::seq_mean_token_mean: a = 1.0 / (double(sequences) * double(n)); break;
      case aggregation::seq_mean_token_sum_norm:
        a = 1.0 / (double(sequences) * s.aggregation_norm);
        break;
    }
    // The reward R_t at the level, and the as-loss term's value A_t and derivative D_t.
    std::vector<double> R(T, 0.0), A(T, 0.0), D(T, 0.0), V(T, 0.0);
    for (std::size_t t = 0; t < T; ++t) {
      if (!seq[t].valid) continue;
      const double st = seq[t].lp - seq[t].lr;
      if (s.level == level::token) {
        R[t] = k[t];
      } else if (s.level == level::sequence) {
        R[t] = K;
      } else {
        double discount = 1.0;
        for (std::size_t u = t; u < T; ++u) {
          if (!seq[u].valid) continue;
          R[t] += discount * k[u];
          discount *= s.gamma;
        }
      }
      if (s.level == level::sequence) {
        A[t] = klgrad::value(ea, S);
        D[t] = klgrad::derivative(eb, S);
        V[t] = as ? A[t] / double(n) : k[t];
      } else {
        A[t] = k[t];
        D[t] = klgrad::derivative(eb, st);
        V[t] = k[t];
      }
    }
    for (std::size_t t = 0; t < T; ++t) {
      if (!seq[t].valid) continue;
      // Surrogate: none L = [in] sg(R) lp + [as] A; detached L = sg(w) (...);
      // differentiable L = w ([in] sg(R) + [as] A).
      double c = 0;
      switch (s.importance.mode) {
        case weighting::none: c = (in ? R[t] : 0) + (as ? D[t] : 0); break;
        case weighting::detached: c = used[t] * ((in ? R[t] : 0) + (as ? D[t] : 0)); break;
        case weighting::differentiable:
          c = dused[t] * ((in ? R[t] : 0) + (as ? A[t] : 0)) + (as ? used[t] * D[t] : 0);
          break;
      }
      value[t] = used[t] * V[t];
      coef[t] = s.beta * a * c;
      out.loss += s.beta * a * value[t];
    }
    out.value.push_back(value);
    out.coef.push_back(coef);
  }
  return out;
}

}  // namespace klgrad::test
