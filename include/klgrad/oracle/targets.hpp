// Exact targets of a tabular policy against a reference: the sequence divergences
// KL(pi||ref) and KL(ref||pi) and, with respect to every logit, their gradients and the
// per-state ("token-level", states frozen) gradients under a given state distribution.
#pragma once

#include "categorical.hpp"
#include "tabular.hpp"

#include <klgrad/support/errors.hpp>

#include <algorithm>
#include <limits>

namespace klgrad::oracle {

namespace detail {
inline void require_same_shape(const tabular& a, const tabular& b, const char* what) {
  if (a.vocab != b.vocab || a.steps != b.steps)
    klgrad::detail::raise<shape_error>(klgrad::detail::cat(
        what, " has vocab ", b.vocab, " and steps ", b.steps, " but the policy has vocab ",
        a.vocab, " and steps ", a.steps));
}
}  // namespace detail

namespace detail {
/// sum_h d(h) f(pi_h, ref_h): a per-state divergence f weighted by a state distribution d
/// (one entry per row), the sum every value below is.
template <class F>
double weighted_over_states(const tabular& pi, const tabular& ref, const vector& d, F f) {
  const matrix lp = pi.log_probs(), lr = ref.log_probs();
  double v = 0.0;
  for (Index r = 0; r < pi.rows(); ++r) v += d(r) * f(lp.row(r).transpose(), lr.row(r).transpose());
  return v;
}
}  // namespace detail

/// Per-state divergences weighted by a state distribution d (one entry per row):
/// sum_h d(h) KL(pi_h || ref_h) and sum_h d(h) KL(ref_h || pi_h).
inline double rkl_token_value(const tabular& pi, const tabular& ref, const vector& d) {
  return detail::weighted_over_states(pi, ref, d, rkl);
}
inline double fkl_token_value(const tabular& pi, const tabular& ref, const vector& d) {
  return detail::weighted_over_states(pi, ref, d, fkl);
}

/// Sequence reverse KL: KL_seq = E_{y~pi}[sum_t s_t] = sum_h d_pi(h) KL(pi_h || ref_h).
inline double rkl_value(const tabular& pi, const tabular& ref) {
  detail::require_same_shape(pi, ref, "ref");
  return rkl_token_value(pi, ref, state_distribution(pi));
}

/// Sequence forward KL: KL(ref || pi) = sum_h d_ref(h) KL(ref_h || pi_h).
inline double fkl_value(const tabular& pi, const tabular& ref) {
  detail::require_same_shape(pi, ref, "ref");
  return fkl_token_value(pi, ref, state_distribution(ref));
}

/// d KL_seq / dz_h = d_pi(h) pi_h * (Q_h - V_h), where Q_h(y) = s_h(y) + V_{child(h,y)} is the
/// KL-to-go after choosing y at h and V_h = E_{pi_h}[Q_h] (V = 0 after the last step).
/// Computed by a backward recursion, independently of any enumeration.
inline vector rkl_gradient(const tabular& pi, const tabular& ref) {
  detail::require_same_shape(pi, ref, "ref");
  const matrix lp = pi.log_probs(), lr = ref.log_probs();
  const vector d = state_distribution(pi, lp);
  const Index V = pi.vocab;
  vector to_go = vector::Zero(pi.rows());
  vector g(pi.parameters());
  for (Index t = pi.steps - 1; t >= 0; --t)
    for (Index prefix = 0; prefix < tabular::power(V, t); ++prefix) {
      const Index r = pi.row(t, prefix);
      vector q(V), p(V);
      for (Index y = 0; y < V; ++y) {
        q(y) = lp(r, y) - lr(r, y) + (t + 1 < pi.steps ? to_go(pi.row(t + 1, prefix * V + y)) : 0.0);
        p(y) = std::exp(lp(r, y));
      }
      to_go(r) = p.dot(q);
      g.segment(r * V, V) = d(r) * (p.array() * (q.array() - to_go(r))).matrix();
    }
  return g;
}

/// d KL(ref||pi) / dz_h = d_ref(h) (pi_h - ref_h).
inline vector fkl_gradient(const tabular& pi, const tabular& ref) {
  detail::require_same_shape(pi, ref, "ref");
  const matrix lp = pi.log_probs(), lr = ref.log_probs();
  const vector d = state_distribution(ref, lr);
  vector g(pi.parameters());
  for (Index r = 0; r < pi.rows(); ++r)
    g.segment(r * pi.vocab, pi.vocab) = d(r) * fkl_gradient(lp.row(r).transpose(), lr.row(r).transpose());
  return g;
}

/// The per-state gradient of any per-state objective f_h(z_h), weighted by a frozen state
/// distribution d: row h gets d(h) * grad f_h. `state_gradient(lp_row, lr_row)` gives grad f_h.
template <class F>
vector token_gradient(const tabular& pi, const tabular& ref, const vector& d, F state_gradient) {
  detail::require_same_shape(pi, ref, "ref");
  const matrix lp = pi.log_probs(), lr = ref.log_probs();
  vector g(pi.parameters());
  for (Index r = 0; r < pi.rows(); ++r)
    g.segment(r * pi.vocab, pi.vocab) =
        d(r) * state_gradient(vector(lp.row(r).transpose()), vector(lr.row(r).transpose()));
  return g;
}

/// "rkl_token" (part 1 of the sequence gradient, docs/theory.md table 5): sum_h d(h) grad KL(pi_h || ref_h), states frozen;
/// d defaults to pi's own state distribution.
inline vector rkl_token_gradient(const tabular& pi, const tabular& ref, const vector& d) {
  return token_gradient(pi, ref, d, [](const vector& a, const vector& b) { return rkl_gradient(a, b); });
}
inline vector rkl_token_gradient(const tabular& pi, const tabular& ref) {
  return rkl_token_gradient(pi, ref, state_distribution(pi));
}

/// "fkl_token": sum_h d(h) grad KL(ref_h || pi_h) = d(h) (pi_h - ref_h), states frozen;
/// d defaults to pi's own state distribution (what per-token k3 as_loss estimates).
inline vector fkl_token_gradient(const tabular& pi, const tabular& ref, const vector& d) {
  return token_gradient(pi, ref, d, [](const vector& a, const vector& b) { return fkl_gradient(a, b); });
}
inline vector fkl_token_gradient(const tabular& pi, const tabular& ref) {
  return fkl_token_gradient(pi, ref, state_distribution(pi));
}

/// Everything `klgrad audit` compares against.
struct targets {
  double rkl = 0, fkl = 0;  ///< sequence values
  vector rkl_gradient, rkl_token_gradient, fkl_gradient, fkl_token_gradient;
};

inline targets exact_targets(const tabular& pi, const tabular& ref) {
  targets out;
  out.rkl = rkl_value(pi, ref);
  out.fkl = fkl_value(pi, ref);
  out.rkl_gradient = rkl_gradient(pi, ref);
  out.rkl_token_gradient = rkl_token_gradient(pi, ref);
  out.fkl_gradient = fkl_gradient(pi, ref);
  out.fkl_token_gradient = fkl_token_gradient(pi, ref);
  return out;
}

/// ||g - target|| / max(||target||, smallest normal double).
inline double relative_error(const vector& g, const vector& target) {
  return (g - target).norm() / std::max(target.norm(), std::numeric_limits<double>::min());
}

}  // namespace klgrad::oracle
