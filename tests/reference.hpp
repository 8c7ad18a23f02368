// An independent, deliberately plain implementation of evaluate()'s semantics, written from
// the surrogate losses (not from the kernel): one token at a time, in double, straight
// loops. The kernel tests compare against it.
#pragma once

#include <klgrad/core/estimators.hpp>
#include <klgrad/core/importance.hpp>
#include <klgrad/spec/spec.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace klgrad::test {

/// One token's weight as the loss uses it.
template <class T>
struct token_weight {
  T used = T(1);          ///< the factor that multiplies the token's loss and coefficient
  T gradient = T(0);      ///< d(used)/d(lp): used when differentiable and not truncated
  bool dropped = false;   ///< outside the band mask
  bool guarded = false;   ///< log w was clamped to keep exp finite
};

/// The weight used for log weight log_w (log w_t, log W_{1:t} or the sequence mean, by
/// is-level). log w is clamped to [-exp_bound, exp_bound] (float 43.4, double 353.9) before
/// exp so that w, and w times any estimator value, stay finite.
template <class T>
token_weight<T> weigh(T log_w, const importance& is) {
  token_weight<T> out;
  if (!is.active()) return out;
  const T bound = detail::exp_bound<T>();
  if (log_w > bound || log_w < -bound) {
    out.guarded = true;
    log_w = std::clamp(log_w, -bound, bound);
  }
  const T w = std::exp(log_w);
  if (is.masked() && (w < T(is.mask_lo) || w > T(is.mask_hi))) {
    out.used = T(0);
    out.dropped = true;
    return out;
  }
  const bool truncated = w > T(is.clip);
  out.used = truncated ? T(is.clip) : w;
  out.gradient = (is.mode == weighting::differentiable && !truncated) ? w : T(0);
  return out;
}

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
  const clamp_policy& cl = s.clamp;
  const bool clamping = cl.log_bounded() || cl.value_bounded();
  // The trainer's clamps, as torch.clamp does them: s bounded first, then k(s) bounded
  // (unless after the weight); gradient only where no bound is active, bounds inclusive.
  struct clamped {
    double k, dk;
    bool inside;
  };
  auto estimate = [&](estimator e, double st) {
    if (!clamping || !((cl.estimators >> unsigned(e)) & 1u))
      return clamped{klgrad::value(e, st), klgrad::derivative(e, st), true};
    const bool inside = st >= cl.log_lo && st <= cl.log_hi;
    const double sc = std::min(std::max(st, cl.log_lo), cl.log_hi);
    double k = klgrad::value(e, sc), dk = klgrad::derivative(e, sc);
    bool passes = inside;
    if (!cl.after_weight) {
      passes = passes && k >= cl.value_lo && k <= cl.value_hi;
      k = std::min(std::max(k, cl.value_lo), cl.value_hi);
    }
    if (!passes && !cl.pass_gradient) dk = 0;
    return clamped{k, dk, inside};
  };
  const weight_level wl = s.importance.level;
  for (const auto& seq : batch) {
    const std::size_t T = seq.size();
    std::vector<double> value(T, 0.0), coef(T, 0.0), k(T, 0.0), used(T, 1.0), dused(T, 0.0);
    std::vector<bool> inside(T, true);
    long n = 0;
    double S = 0, K = 0, log_w_sum = 0;
    for (std::size_t t = 0; t < T; ++t) {
      if (!seq[t].valid) continue;
      ++n;
      const double st = seq[t].lp - seq[t].lr;
      S += st;
      const clamped ka = estimate(ea, st);
      k[t] = ka.k;
      inside[t] = ka.inside && estimate(eb, st).inside;
      K += k[t];
      log_w_sum += seq[t].lp - seq[t].lb;
    }
    if (n == 0) {
      out.value.push_back(value);
      out.coef.push_back(coef);
      continue;
    }
    // The weight used by token t and d(used_t)/d(lp_j) for every j: dweight[t][j].
    std::vector<std::vector<double>> dweight(T, std::vector<double>(T, 0.0));
    if (s.importance.active()) {
      double prefix = 0;
      for (std::size_t t = 0; t < T; ++t) {
        if (!seq[t].valid) continue;
        const double log_w = seq[t].lp - seq[t].lb;
        prefix += log_w;
        double log_u = log_w;
        if (wl == weight_level::prefix || wl == weight_level::per_decision) log_u = prefix;
        if (wl == weight_level::sequence_mean) log_u = log_w_sum / double(n);
        const auto w = weigh(log_u, s.importance);
        used[t] = w.used;
        double g = w.gradient;
        if (cl.detach_weight && !inside[t]) g = 0;  // NeMo-RL: active input clamp
        dused[t] = g;
        for (std::size_t j = 0; j < T; ++j) {
          if (!seq[j].valid) continue;
          if (wl == weight_level::token && j == t) dweight[t][j] = g;
          if ((wl == weight_level::prefix || wl == weight_level::per_decision) && j <= t)
            dweight[t][j] = g;
          if (wl == weight_level::sequence_mean) dweight[t][j] = g / double(n);
        }
      }
    }
    // a_{b,t}: the trainers' denominators, each count plus its epsilon, times the scale.
    const double N_eps = double(tokens) + s.aggregation_constants.eps;
    const double B_eps = double(sequences) + s.aggregation_constants.eps;
    const double n_eps = double(n) + s.aggregation_constants.seq_eps;
    double a = 0;
    switch (s.aggregation) {
      case aggregation::token_mean: a = 1.0 / N_eps; break;
      case aggregation::token_sum: a = 1.0; break;
      case aggregation::token_sum_norm: a = 1.0 / s.aggregation_constants.norm; break;
      case aggregation::seq_mean_token_sum: a = 1.0 / B_eps; break;
      case aggregation::seq_mean_token_mean: a = 1.0 / (B_eps * n_eps); break;
      case aggregation::seq_mean_token_sum_norm: a = 1.0 / (B_eps * s.aggregation_constants.norm); break;
    }
    a *= s.aggregation_constants.scale;
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
        A[t] = estimate(ea, S).k;
        D[t] = estimate(eb, S).dk;
        V[t] = as ? A[t] / double(n) : k[t];
      } else {
        A[t] = k[t];
        D[t] = estimate(eb, st).dk;
        V[t] = k[t];
      }
    }
    for (std::size_t t = 0; t < T; ++t) {
      if (!seq[t].valid) continue;
      // Surrogate: none L = [in] sg(R) lp + [as] A; detached L = sg(w) (...);
      // differentiable L = sum_u w_u ([in] sg(R_u) + [as] A_u), whose weight w_u may depend
      // on lp_t for u != t (prefix, sequence-mean). Per-decision: L = sum_t sg(c_t) lp_t,
      // c_t = sum_{u>=t} gamma^(u-t) sg(w_u) k_u. After-weight: L = clamp(w k).
      double c = 0;
      value[t] = used[t] * V[t];
      if (wl == weight_level::per_decision) {
        double discount = 1.0;
        for (std::size_t u = t; u < T; ++u) {
          if (!seq[u].valid) continue;
          c += discount * used[u] * k[u];
          discount *= s.gamma;
        }
      } else if (clamping && cl.after_weight && ((cl.estimators >> unsigned(ea)) & 1u)) {
        const double x = used[t] * k[t];
        const bool band = cl.pass_gradient || (x >= cl.value_lo && x <= cl.value_hi);
        value[t] = std::min(std::max(x, cl.value_lo), cl.value_hi);
        c = band ? dused[t] * k[t] + used[t] * D[t] : 0.0;
      } else {
        switch (s.importance.mode) {
          case weighting::none: c = (in ? R[t] : 0) + (as ? D[t] : 0); break;
          case weighting::detached: c = used[t] * ((in ? R[t] : 0) + (as ? D[t] : 0)); break;
          case weighting::differentiable:
            for (std::size_t u = 0; u < T; ++u)
              if (seq[u].valid) c += dweight[u][t] * ((in ? R[u] : 0) + (as ? A[u] : 0));
            c += as ? used[t] * D[t] : 0;
            break;
        }
      }
      coef[t] = s.beta * a * c;
      out.loss += s.beta * a * value[t];
    }
    out.value.push_back(value);
    out.coef.push_back(coef);
  }
  return out;
}

}  // namespace klgrad::test
