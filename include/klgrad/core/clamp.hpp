// Clamp policies as data: the log-ratio and value bounds a trainer applies to its KL
// estimator, which estimators they apply to, before or after the importance weight, and
// how gradients pass through them.
#pragma once

#include "../support/errors.hpp"
#include "estimators.hpp"

#include <Eigen/Core>
#include <limits>
#include <string>
#include <tuple>

namespace klgrad {

/// A trainer's clamps on its KL estimator k(s), s = lp - lr.
///
///   log-ratio bound: s_c = clamp(s, log_lo, log_hi), applied before the estimator (so
///                    before any exp); the estimator sees s_c.
///   value bound:     v = clamp(k(s_c), value_lo, value_hi), or, with after_weight,
///                    clamp(w * k(s_c)) on the weighted loss term (NeMo-RL, slime).
///
/// Both act only on the estimators in `estimators` (a bit per estimator id; verl clamps k3
/// only, OpenRLHF every estimator). A straight-through term k_a~k_b clamps k_a's value and
/// k_b's derivative separately, each only if its estimator is in the set: verl's "k3+" has
/// a clamped k3 value and the unclamped k2 gradient.
///
/// Gradients follow torch.clamp: an element passes gradient iff lo <= x <= hi (the bound
/// itself passes), and gets exactly 0 strictly outside. With pass_gradient the clamp is
/// straight-through instead (the value is clamped, the derivative is not). With
/// detach_weight, a token whose log-ratio bound is active has its importance weight
/// detached (NeMo-RL: an active input clamp kills the weight's gradient too).
///
/// Whatever the policy, the library's finiteness guard stays underneath it: s is kept in
/// the range where exp(-s) and the polynomials stay finite, and log w within +-exp_bound.
/// Where a trainer's own arithmetic overflows to inf or NaN (an exp above 88.72 in fp32),
/// klgrad returns the guarded finite result and counts the token in summary::guarded.
struct clamp_policy {
  static constexpr double inf = std::numeric_limits<double>::infinity();
  static constexpr unsigned all_estimators_mask = 0xFu;

  double log_lo = -inf, log_hi = inf;
  double value_lo = -inf, value_hi = inf;
  unsigned estimators = all_estimators_mask;  ///< bit (1 << int(estimator)) per estimator
  bool after_weight = false;
  bool detach_weight = false;
  bool pass_gradient = false;

  bool log_bounded() const { return log_lo > -inf || log_hi < inf; }
  bool value_bounded() const { return value_lo > -inf || value_hi < inf; }
  bool active() const { return log_bounded() || value_bounded(); }
  bool applies_to(estimator e) const { return (estimators >> unsigned(e)) & 1u; }

  friend bool operator==(const clamp_policy& a, const clamp_policy& b) {
    return a.log_lo == b.log_lo && a.log_hi == b.log_hi && a.value_lo == b.value_lo &&
           a.value_hi == b.value_hi && a.estimators == b.estimators &&
           a.after_weight == b.after_weight && a.detach_weight == b.detach_weight &&
           a.pass_gradient == b.pass_gradient;
  }
  friend bool operator!=(const clamp_policy& a, const clamp_policy& b) { return !(a == b); }
};

inline constexpr unsigned estimator_bit(estimator e) { return 1u << unsigned(e); }

/// Whether the policy acts on estimator type E: a shipped estimator by its bit, one of your
/// own (no runtime id) when the policy acts on every estimator (the default set).
template <class E>
bool clamps(const clamp_policy& c) {
  if constexpr (has_runtime_id<E>::value)
    return c.applies_to(E::id);
  else
    return c.estimators == clamp_policy::all_estimators_mask;
}

namespace detail {

/// Why a policy's bands cannot serve (a band that excludes 0); empty when they can. Every
/// estimator is 0 at s = 0, where pi = ref: a band without 0 would penalise or reward the
/// on-policy point itself, hand masked positions (s = 0) its bound, and hold s where the
/// finiteness guard, which acts before the clamp, cannot reach (log-ratio:-1000:-900 gives
/// k3 = e^900 = inf).
inline std::string clamp_band_problem(const clamp_policy& c) {
  for (const auto& [name, lo, hi] : {std::tuple{"log-ratio", c.log_lo, c.log_hi},
                                     std::tuple{"value", c.value_lo, c.value_hi}})
    if (!(lo <= 0.0 && 0.0 <= hi))
      return cat("clamp ", name, " band [", format_number(lo), ", ", format_number(hi),
                 "] excludes 0: every estimator is 0 at s = 0 (pi = ref), so a band without 0 "
                 "would penalise or reward the on-policy point (and give masked tokens its "
                 "bound); use LO <= 0 <= HI");
  return {};
}

}  // namespace detail

/// A clamped estimator at one s: the value, the derivative d(value)/ds as autograd gives
/// it, and whether the log-ratio bound let s through (for detach_weight).
template <class T>
struct clamped_estimate {
  T value, derivative;
  bool log_inside;
};

/// Scalar form of the policy applied to estimator E at s (with the value bound only when
/// the policy clamps before the weight). E's derivative is taken at the clamped s.
template <class E, class T>
clamped_estimate<T> clamp_estimate(const clamp_policy& c, T s) {
  if (!clamps<E>(c)) return {E::value(s), E::derivative(s), true};
  const T lo = T(c.log_lo), hi = T(c.log_hi);
  const bool inside = lo <= s && s <= hi;
  const T sc = s < lo ? lo : (s > hi ? hi : s);
  T v = E::value(sc);
  T d = E::derivative(sc);
  bool pass = inside;
  if (!c.after_weight) {
    const T vlo = T(c.value_lo), vhi = T(c.value_hi);
    pass = pass && vlo <= v && v <= vhi;
    v = v < vlo ? vlo : (v > vhi ? vhi : v);
  }
  if (!pass && !c.pass_gradient) d = T(0);
  return {v, d, inside};
}

/// A policy's bounds broadcast to packets of T, for clamp_packet().
template <class T>
struct packet_bounds {
  using P = typename Eigen::internal::packet_traits<T>::type;
  P log_lo, log_hi, value_lo, value_hi;
  bool value_bound;    ///< the value bound acts here (before the weight)
  bool pass_gradient;  ///< straight-through: the derivative ignores the bounds

  explicit packet_bounds(const clamp_policy& c) {
    using namespace Eigen::internal;
    log_lo = pset1<P>(T(c.log_lo));
    log_hi = pset1<P>(T(c.log_hi));
    value_lo = pset1<P>(T(c.value_lo));
    value_hi = pset1<P>(T(c.value_hi));
    value_bound = !c.after_weight;
    pass_gradient = c.pass_gradient;
  }
};

/// clamp_estimate() on a packet of s: E's clamped value and derivative, and `inside`, all
/// bits set in the lanes whose s the log-ratio bound let through. A NaN s stays NaN in the
/// value and gets derivative 0, as in the scalar form.
///
/// A lane is inside a band iff clamping leaves it unchanged (lo <= x <= hi; a NaN is
/// neither), so one comparison of x with its clamped self tests both bounds: half the
/// comparisons (and their mask-to-vector conversions) of testing lo and hi apart.
template <class E, class T, class P>
EIGEN_ALWAYS_INLINE void clamp_packet(const packet_bounds<T>& c, const P& s, P& value,
                                      P& derivative, P& inside) {
  using namespace Eigen::internal;
  const P s_c = pmin(pmax(s, c.log_lo), c.log_hi);
  inside = pcmp_eq(s_c, s);
  E::packet_both(s_c, value, derivative);
  P pass = inside;
  if (c.value_bound) {
    const P v_c = pmin(pmax(value, c.value_lo), c.value_hi);
    pass = pand(pass, pcmp_eq(v_c, value));
    value = v_c;
  }
  if (!c.pass_gradient) derivative = pand(derivative, pass);
}

}  // namespace klgrad
