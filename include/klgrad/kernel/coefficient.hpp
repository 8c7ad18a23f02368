// The coefficient a kernel pass writes: the adapter (core/adapter.hpp) applied to a chunk's
// parts and weights, scaled by beta * a_{b,t} and saturated.
#pragma once

#include "../core/adapter.hpp"
#include "chunk.hpp"

#include <Eigen/Core>

namespace klgrad::detail {

/// Writes coef = scale * x, saturated. x, the unscaled coefficient, is finite at token level
/// (every term below max / e^2, the guards) but may overflow where a level sum meets a weight
/// (`sums`): it saturates first there, since the scale may be 0 (beta = 0) and 0 * inf is NaN.
/// The scale multiplies last, so that a huge scale times a huge weight never meets a 0 factor.
template <class T, class X>
void store_scaled(T* coef, Index n, const X& x, T scale, bool sums) {
  typename chunk<T>::map out(coef, n);
  if (sums) {
    out = x;
    saturate(coef, n);
    out *= scale;
  } else {
    out = scale * x;
  }
  if (sums || scale > T(1)) saturate(coef, n);
}

/// Writes coef = scale * valid * C, C the spec's adapt() (core/adapter.hpp) of R, the
/// in-reward penalty at the level, and A, D, the as-loss term's value and derivative at the
/// level (arrays over the chunk or constants broadcast over it), with the chunk's weights.
template <class T, class R, class A, class D>
void write_coefficient(chunk<T>& c, const plan<T>& p, const R& r, const A& a, const D& d,
                       T scale, T* coef) {
  const bool sums = p.at_level != level::token;
  adapt(p.where, p.mode, r, a, d, c.m(c.used), c.m(c.grad),
        [&](const auto& x) { store_scaled(coef, c.n, c.m(c.valid) * x, scale, sums); });
}

/// write_coefficient() for weights whose gradient reaches other tokens (prefix, sequence-mean):
/// wt holds, per token j, the weight-gradient part sum_t (d used_t / d lp_j) X_t of the
/// differentiable surrogate sum_t used_t X_t (X = placed(R, A)), and
/// with_weight_gradient() adds the token's own [loss] used D.
/// Only is=differentiable comes here (detached weights use write_coefficient()).
template <class T, class W>
void write_coefficient_through_weights(chunk<T>& c, const plan<T>& p, const W& wt, T scale,
                                       T* coef) {
  with_weight_gradient(p.where, wt, c.m(c.derivative), c.m(c.used), [&](const auto& x) {
    store_scaled(coef, c.n, c.m(c.valid) * x, scale, true);
  });
}

/// The inputs of fused_pass()'s coefficient as symbols for a term's coefficient_of()
/// (core/terms.hpp): functors of the packets (v, g) = (k_a(s), k_b'(s)), so that the term's
/// expression is chosen once per sequence and inlined into the packet loop.
struct packet_value {
  template <class P>
  P operator()(const P& v, const P&) const { return v; }
};
struct packet_derivative {
  template <class P>
  P operator()(const P&, const P& g) const { return g; }
};
struct packet_value_plus_derivative {
  template <class P>
  P operator()(const P& v, const P& g) const { return Eigen::internal::padd(v, g); }
};
inline packet_value_plus_derivative operator+(packet_value, packet_derivative) { return {}; }

}  // namespace klgrad::detail
