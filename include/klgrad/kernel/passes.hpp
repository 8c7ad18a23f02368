// The passes over one sequence, one function per path of the kernel (plan::pass): each
// writes the sequence's values and coefficients and returns its summed value.
#pragma once

#include "coefficient.hpp"
#include "estimates.hpp"
#include "sum_to_go.hpp"

#include <algorithm>
#include <limits>

namespace klgrad::detail {

/// The token-level path without weights (the common case: k in reward, k as loss,
/// on-policy, with or without a clamp before the weight) in one pass: each packet of
/// log-ratios becomes value and coefficient,
///   value = k_a(s),  coef = scale * valid * Term::coefficient_of(k_a(s), k_b'(s)),
/// Term the spec's term type (term_of<Where, Ev, Eg>: as_loss<k3> for k3-as-loss), each
/// estimate clamped where the policy acts on it, stored straight into the caller's arrays
/// (write_coefficient() with weight 1, without the chunk buffers in between). Returns the
/// summed value; adds the guarded tokens to `guarded` and the valid ones to `valid_tokens`.
template <class Ev, class Eg, class T, class M>
double fused_pass(const sequence_view<T, M>& q, T* value, T* coef, const plan<T>& p,
                  chunk<T>& c, T scale, Index& guarded, Index& valid_tokens) {
  using namespace Eigen::internal;
  using P = packet<T>;
  // Masked lanes have s = 0, where every value is 0 and so is every derivative but k1's.
  constexpr bool mask_gradient = !Eg::derivative_zero_at_zero;
  const packet_bounds<T> bounds(p.clamp);
  auto pass = [&](auto coefficient) {
    double total = 0.0;
    for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
      const Index n = std::min(chunk_size, q.size - i0);
      // Local copies, so that the compiler keeps the destinations in registers.
      T* const value_out = value + i0;
      T* const coef_out = coef + i0;
      const auto checks =
          log_ratio_packets(c, q, i0, n, p, [&](Index k, const P& s, const P& valid, auto whole) {
            P v, g, inside;
            clamped_value_and_gradient<Ev, Eg>(p, bounds, s, v, g, inside);
            P out = coefficient(v, g);
            if constexpr (mask_gradient) out = pand(out, valid);
            if constexpr (decltype(whole)::value) {
              pstoreu(value_out + k, v);
              pstoreu(coef_out + k, out);
            } else {
              pstore(c.estimate + k, v);
              pstore(c.scratch + k, out);
              std::copy(c.estimate + k, c.estimate + n, value_out + k);
              std::copy(c.scratch + k, c.scratch + n, coef_out + k);
            }
            return v;
          });
      if (p.nonfinite == nonfinite_policy::raise && checks.nonfinite) find_nonfinite(q, i0, n);
      guarded += checks.guarded;
      valid_tokens += checks.valid;
      total += double(checks.sum);
      if (scale > T(1)) saturate(coef + i0, n);
    }
    return total;
  };
  // The scale multiplies the coefficient last: with both parts, scale * v and scale * g may
  // overflow with opposite signs where their sum does not (k3-both, beta = 1e30).
  const P factor = pset1<P>(scale);
  return visit(p.where, [&](auto where) {
    using Term = term_of<decltype(where)::value, Ev, Eg>;
    const auto part = Term::coefficient_of(packet_value{}, packet_derivative{});
    return pass([&](const P& v, const P& g) { return pmul(factor, part(v, g)); });
  });
}

/// The multi-pass paths of a sequence with n_b > 0 valid tokens, each a sweep (or several)
/// over its chunks: fill() computes a chunk's log-ratios, estimates and weights, then the
/// path writes value and coef. Each returns the sequence's summed value.
template <class Ev, class Eg, class T, class M>
struct sequence_passes {
  using map = typename chunk<T>::map;
  const sequence_view<T, M>& q;
  T* value;
  T* coef;
  const plan<T>& p;
  chunk<T>& c;
  summary& out;
  Index n_b;
  T scale;
  weight_state<T> ws;

  /// One sweep: fills each chunk and calls f(i0, n). The first sweep of a path counts the
  /// guarded and dropped tokens (`count`); every sweep restarts the prefix weights.
  template <class F>
  void sweep(bool count, F&& f) {
    ws.carry = 0;
    Index ignored = 0;
    for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
      const Index n = std::min(chunk_size, q.size - i0);
      const Index guarded = fill<Ev, Eg>(c, q, i0, n, p, count ? out.dropped : ignored, ws);
      if (count) out.guarded += guarded;
      f(i0, n);
    }
  }
  /// A sweep that writes each chunk's weighted values u k_a(s) (masked tokens have s = 0,
  /// and k(0) = 0 for every estimator) and then calls f(i0, n); returns the summed value.
  template <class F>
  double value_sweep(bool count, F&& f) {
    double total = 0.0;
    sweep(count, [&](Index i0, Index n) {
      total += weighted_values(c);
      map(value + i0, n) = c.m(c.scratch);
      f(i0, n);
    });
    return total;
  }
  auto constant(T x) const { return chunk<T>::array::Constant(c.n, x); }

  /// Each token's own weight multiplies its terms: token weights, detached prefix or
  /// sequence-mean weights, clamps, or a mode that divides by n_b.
  double token() {
    return value_sweep(true, [&](Index i0, Index) {
      write_coefficient(c, p, c.m(c.estimate), c.m(c.estimate), c.m(c.derivative), scale,
                        coef + i0);
    });
  }

  /// An as-loss term clamped after the weight: L = clamp(u k_a, lo, hi), whose coefficient
  /// is adapt()'s times band = [lo <= u k_a <= hi]; adapt() is linear in its parts, so the
  /// band multiplies them.
  double after_weight() {
    const T lo = T(p.clamp.value_lo), hi = T(p.clamp.value_hi);
    const bool pass = p.clamp.pass_gradient;
    double total = 0.0;
    sweep(true, [&](Index i0, Index n) {
      T* const band = c.inside;  // fill() is done with it
      for (Index i = 0; i < n; ++i) {
        const T x = c.used[i] * c.estimate[i];
        band[i] = pass || (lo <= x && x <= hi) ? T(1) : T(0);
        c.scratch[i] = c.valid[i] * (x < lo ? lo : (x > hi ? hi : x));
      }
      total += double(c.m(c.scratch).sum());
      map(value + i0, n) = c.m(c.scratch);
      const auto kept = c.m(band) * c.m(c.estimate);
      write_coefficient(c, p, kept, kept, c.m(band) * c.m(c.derivative), scale, coef + i0);
    });
    return total;
  }

  /// Per-decision weights: c_t = sum_{t'>=t} gamma^(t'-t) used_t' b_t', b = k_a: the
  /// weighted penalties into coef, then the discounted backward sum, then the scale.
  double per_decision() {
    const double total = value_sweep(true, [&](Index i0, Index n) {
      map(coef + i0, n) = c.m(c.valid) * c.m(c.scratch);
    });
    sum_to_go(q.mask, q.size, coef, p.gamma);
    map(coef, q.size) *= scale;
    saturate(coef, q.size);
    return total;
  }

  /// Differentiable prefix weights. Sweep 1: grad_t X_t into coef (X = placed(R, A), here
  /// R = A = k_a); then the sum to go, the weight-gradient part of every earlier token;
  /// sweep 2: each token's own part.
  double prefix() {
    const double total = value_sweep(true, [&](Index i0, Index n) {
      placed(p.where, c.m(c.estimate), c.m(c.estimate), [&](const auto& x) {
        map(coef + i0, n) = c.m(c.valid) * c.m(c.grad) * x;
      });
    });
    sum_to_go(q.mask, q.size, coef, T(1));
    sweep(false, [&](Index i0, Index n) {
      c.m(c.scratch) = map(coef + i0, n);
      write_coefficient_through_weights(c, p, c.m(c.scratch), scale, coef + i0);
    });
    return total;
  }

  /// A differentiable sequence-mean weight: d w_seq / d lp_j = w_seq / n_b, so every token
  /// gets (grad / n_b) sum_t X_t.
  double sequence_mean() {
    double penalty = 0.0;
    const double total = value_sweep(true, [&](Index, Index) {
      c.m(c.scratch) = c.m(c.valid) * c.m(c.estimate);
      penalty = saturated(penalty + saturated_sum(c, c.scratch));
    });
    const double top = double(std::numeric_limits<T>::max());
    const double x = placed(p.where, penalty, penalty, [](double sum) { return sum; });
    const T share = T(std::clamp(x / double(n_b), -top, top));
    sweep(false, [&](Index i0, Index) {
      write_coefficient_through_weights(c, p, c.m(c.grad) * share, scale, coef + i0);
    });
    return total;
  }

  /// Level to-go. Sweep 1: penalties k_a(s_t) into coef; then the reward-to-go backwards
  /// over valid tokens; sweep 2: weights and scale.
  double to_go() {
    sweep(true, [&](Index i0, Index n) {
      map(coef + i0, n) = c.m(c.valid) * c.m(c.estimate);
    });
    sum_to_go(q.mask, q.size, coef, p.gamma);
    return value_sweep(false, [&](Index i0, Index n) {
      // write_coefficient writes over coef, which holds R: copy R into the chunk first.
      c.m(c.scratch) = map(coef + i0, n);
      write_coefficient(c, p, c.m(c.scratch), c.m(c.scratch), constant(T(0)), scale, coef + i0);
    });
  }

  /// Level sequence. Sweep 1: the sequence sums K = sum k_a(s_t) and S = sum s_t; sweep 2:
  /// the in-reward part K and the as-loss term of S, broadcast.
  double sequence() {
    double penalty = 0.0, log_ratio = 0.0;
    sweep(true, [&](Index, Index) {
      c.m(c.scratch) = c.m(c.valid) * c.m(c.estimate);
      penalty = saturated(penalty + saturated_sum(c, c.scratch));
      log_ratio = saturated(log_ratio + saturated_sum(c, c.s));
    });
    T S = T(log_ratio);
    if (S < p.lowest || S > p.highest) {
      ++out.guarded;
      S = std::clamp(S, p.lowest, p.highest);
    }
    const T top = std::numeric_limits<T>::max();
    const T K = T(std::clamp(penalty, -double(top), double(top)));
    const T A = p.clamp_value ? clamp_estimate<Ev>(p.clamp, S).value : Ev::value(S);
    const T D = p.clamp_gradient ? clamp_estimate<Eg>(p.clamp, S).derivative : Eg::derivative(S);
    const T share = A / T(n_b);
    double total = 0.0;
    sweep(false, [&](Index i0, Index n) {
      if (has_loss_part(p.where)) {
        c.m(c.scratch) = c.m(c.used) * c.m(c.valid) * share;
        total += double(c.m(c.scratch).sum());
      } else {
        total += weighted_values(c);
      }
      map(value + i0, n) = c.m(c.scratch);
      write_coefficient(c, p, constant(K), constant(A), constant(D), scale, coef + i0);
    });
    return total;
  }
};

/// Adds a sequence with n_b valid tokens and summed value `total` to the summary; returns
/// total, saturated (so that scale * total is never 0 * inf).
template <class T>
double account(summary& out, Index n_b, T scale, double total) {
  total = saturated(total);
  if (n_b == 0) return total;
  out.tokens += n_b;
  out.sequences += 1;
  out.loss = saturated(out.loss + double(scale) * total);
  return total;
}

/// Runs one sequence through the plan's pass: writes its values and coefficients, adds it
/// to the summary, returns its summed value.
template <class Ev, class Eg, class T, class M>
double run_sequence(const sequence_view<T, M>& q, T* value, T* coef, const plan<T>& p,
                    chunk<T>& c, summary& out) {
  if (p.pass == sequence_pass::fused) {
    // One pass that also counts the valid tokens, so that the mask is read once (an empty
    // sequence gets zeros: masked tokens have s = 0 and coefficient 0).
    const T scale = token_scale(p, 0);
    Index n_b = 0;
    const double total = fused_pass<Ev, Eg>(q, value, coef, p, c, scale, out.guarded, n_b);
    return account(out, n_b, scale, total);
  }
  const Index n_b = count_valid(q.mask, q.size);
  if (n_b == 0) {
    std::fill(value, value + q.size, T(0));
    std::fill(coef, coef + q.size, T(0));
    return 0.0;
  }
  const T scale = token_scale(p, n_b);
  sequence_passes<Ev, Eg, T, M> passes{q, value, coef, p, c, out, n_b, scale, {}};
  if (p.weights == weight_level::sequence_mean)
    passes.ws.sequence = sequence_log_weight(q, n_b, p, out.guarded);
  double total = 0.0;
  switch (p.pass) {
    case sequence_pass::fused:  // above
    case sequence_pass::token: total = passes.token(); break;
    case sequence_pass::after_weight: total = passes.after_weight(); break;
    case sequence_pass::per_decision: total = passes.per_decision(); break;
    case sequence_pass::prefix: total = passes.prefix(); break;
    case sequence_pass::sequence_mean: total = passes.sequence_mean(); break;
    case sequence_pass::to_go: total = passes.to_go(); break;
    case sequence_pass::sequence: total = passes.sequence(); break;
  }
  return account(out, n_b, scale, total);
}

}  // namespace klgrad::detail
