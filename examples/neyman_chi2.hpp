// An estimator klgrad does not ship, written against the estimator concept (docs/api.md):
// Neyman's chi-square divergence chi2(ref || pi) = E_pi[(ref/pi - 1)^2], estimated from a
// token sampled from pi by
//   k(s) = (e^-s - 1)^2,   k'(s) = -2 e^-s (e^-s - 1),   s = log pi - log ref.
// k(0) = 0 and k'(0) = 0. Used by examples/user_estimator.cpp and tests/test_user_estimator.cpp.
#pragma once

#include <klgrad/core/estimators.hpp>

#include <Eigen/Core>
#include <cmath>

struct neyman_chi2 : klgrad::estimator_base<neyman_chi2> {
  static constexpr bool derivative_zero_at_zero = true;

  // Scalar forms (scalar_only: Eigen arrays take estimator_base's array forms).
  template <class T>
  static klgrad::scalar_only<T> value(T s) {
    const T u = std::expm1(-s);
    return u * u;
  }
  template <class T>
  static klgrad::scalar_only<T> derivative(T s) {
    const T u = std::expm1(-s);
    return T(-2) * (u + T(1)) * u;
  }
  using estimator_base<neyman_chi2>::value;
  using estimator_base<neyman_chi2>::derivative;

  // Packet forms, which the fused kernel calls.
  template <class P>
  static P packet_value(const P& s) {
    using namespace Eigen::internal;
    const P u = psub(pexp(pnegate(s)), pset1<P>(typename unpacket_traits<P>::type(1)));
    return pmul(u, u);
  }
  template <class P>
  static P packet_derivative(const P& s) {
    using namespace Eigen::internal;
    using T = typename unpacket_traits<P>::type;
    const P e = pexp(pnegate(s));
    return pmul(pset1<P>(T(-2)), pmul(e, psub(e, pset1<P>(T(1)))));
  }

  // e^-2s must stay finite with room for a weight; e^-s -> 0 above.
  template <class T>
  static T lowest_safe() {
    return -klgrad::detail::exp_bound<T>() / T(2);
  }
  template <class T>
  static T highest_safe() {
    return klgrad::detail::polynomial_bound<T>();
  }
};

static_assert(klgrad::is_estimator_v<neyman_chi2>);
