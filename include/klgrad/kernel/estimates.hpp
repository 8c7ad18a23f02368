// A chunk's estimates: the log-ratio pass, the estimators' values and derivatives under the
// spec's clamp, and the weights, in the chunk's buffers for the level passes.
#pragma once

#include "../core/clamp.hpp"
#include "chunk.hpp"
#include "weights.hpp"

#include <type_traits>

namespace klgrad::detail {

/// k_a(s) and k_b'(s) of a packet; one shared evaluation when a and b are the same
/// estimator (k3's argument reduction serves both).
template <class Ev, class Eg, class P>
void value_and_gradient(const P& s, P& value, P& gradient) {
  if constexpr (std::is_same_v<Ev, Eg>) {
    Ev::packet_both(s, value, gradient);
  } else {
    value = Ev::packet_value(s);
    gradient = Eg::packet_derivative(s);
  }
}

/// value_and_gradient() under the spec's clamp: each estimator the policy acts on is clamped
/// (clamp_packet); `inside` gets all bits where the log-ratio bound let s through (every
/// lane when the policy acts on neither estimator).
template <class Ev, class Eg, class T, class P>
EIGEN_ALWAYS_INLINE void clamped_value_and_gradient(const plan<T>& p, const packet_bounds<T>& b,
                                                    const P& s, P& value, P& gradient,
                                                    P& inside) {
  using namespace Eigen::internal;
  if (!p.clamp_value && !p.clamp_gradient) {
    value_and_gradient<Ev, Eg>(s, value, gradient);
    inside = ptrue(s);
    return;
  }
  if constexpr (std::is_same_v<Ev, Eg>) {  // then clamp_value == clamp_gradient
    clamp_packet<Ev>(b, s, value, gradient, inside);
  } else {
    P unused, inside_value = ptrue(s), inside_gradient = ptrue(s);
    if (p.clamp_value)
      clamp_packet<Ev>(b, s, value, unused, inside_value);
    else
      value = Ev::packet_value(s);
    if (p.clamp_gradient)
      clamp_packet<Eg>(b, s, unused, gradient, inside_gradient);
    else
      gradient = Eg::packet_derivative(s);
    inside = pand(inside_value, inside_gradient);
  }
}

/// Fills the chunk for positions i0 .. i0+n-1 of a sequence: mask, guarded log-ratio,
/// estimator value and derivative, weights. Returns how many tokens a guard clamped and
/// adds the band-dropped tokens to `dropped`.
template <class Ev, class Eg, class T, class M>
Index fill(chunk<T>& c, const sequence_view<T, M>& q, Index i0, Index n, const plan<T>& p,
           Index& dropped, weight_state<T>& ws) {
  using namespace Eigen::internal;
  using P = packet<T>;
  const packet_bounds<T> bounds(p.clamp);
  const P one = pset1<P>(T(1));
  const auto checks = log_ratio_packets(c, q, i0, n, p, [&](Index k, const P& s, const P& valid, auto) {
    pstore(c.valid + k, pand(valid, one));
    pstore(c.s + k, s);
    P v, g, inside;
    clamped_value_and_gradient<Ev, Eg>(p, bounds, s, v, g, inside);
    pstore(c.inside + k, pand(inside, one));
    pstore(c.estimate + k, v);
    pstore(c.derivative + k, g);
    return pset1<P>(T(0));
  });
  Index guarded = checks.guarded;
  if (!p.weighted) {
    if (p.nonfinite == nonfinite_policy::raise && checks.nonfinite) find_nonfinite(q, i0, n);
    return guarded;
  }
  token_weights(c, q, i0, n, p, checks.nonfinite, guarded, dropped, ws);
  return guarded;
}

}  // namespace klgrad::detail
