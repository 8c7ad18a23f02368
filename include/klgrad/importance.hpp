// Token-level importance weights w = pi / mu against a behaviour policy: none, detached or
// differentiable, with truncation and band masking, computed in log space.
#pragma once

#include "estimators.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>

namespace klgrad {

/// How the importance weight enters the surrogate loss of a token:
///  none:           L = [reward] sg(R) lp + [loss] A
///  detached:       L = sg(w) ([reward] sg(R) lp + [loss] A)
///  differentiable: L = w ([reward] sg(R) + [loss] A)     (w = exp(lp - lb) carries gradient)
/// where R is the in-reward penalty and A the as-loss term.
enum class weighting { none, detached, differentiable };

inline constexpr weighting all_weightings[] = {weighting::none, weighting::detached,
                                               weighting::differentiable};

inline constexpr std::string_view to_string(weighting w) {
  switch (w) {
    case weighting::none: return "none";
    case weighting::detached: return "detached";
    case weighting::differentiable: return "differentiable";
  }
  return "?";
}

/// The importance-weighting settings of a spec.
struct importance {
  weighting mode = weighting::none;
  /// Truncation: the weight used is min(w, clip); +inf means no truncation. Where the
  /// truncation is active the weight is a constant (no gradient through it).
  double clip = std::numeric_limits<double>::infinity();
  /// Band mask: a token whose w lies outside [mask_lo, mask_hi] is dropped (weight 0).
  /// It keeps its place in the aggregation's counts, as a rejected sample does.
  double mask_lo = 0.0;
  double mask_hi = std::numeric_limits<double>::infinity();

  bool active() const { return mode != weighting::none; }
  bool truncated() const { return clip < std::numeric_limits<double>::infinity(); }
  bool masked() const {
    return mask_lo > 0.0 || mask_hi < std::numeric_limits<double>::infinity();
  }
  friend bool operator==(const importance& a, const importance& b) {
    return a.mode == b.mode && a.clip == b.clip && a.mask_lo == b.mask_lo &&
           a.mask_hi == b.mask_hi;
  }
};

/// One token's weight as the loss uses it.
template <class T>
struct token_weight {
  T used = T(1);          ///< the factor that multiplies the token's loss and coefficient
  T gradient = T(0);      ///< d(used)/d(lp): used when differentiable and not truncated
  bool dropped = false;   ///< outside the band mask
  bool guarded = false;   ///< log w was clamped to keep exp finite
};

/// Scalar reference: the weight of a token with log w = lp - lb. log w is clamped to
/// [-exp_bound, exp_bound] (float 43.4, double 353.9) before exp so that w, and w times any
/// estimator value, stay finite.
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

}  // namespace klgrad
