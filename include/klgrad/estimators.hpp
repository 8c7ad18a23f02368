// The k-estimators of the log-ratio s = log pi - log ref: value k(s) and derivative k'(s),
// as scalar reference functions and as Eigen array expressions.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <string_view>
#include <type_traits>

namespace klgrad {

/// Runtime name of an estimator (the spec grammar's EST).
enum class estimator { k1, k2, k3, abs };

inline constexpr estimator all_estimators[] = {estimator::k1, estimator::k2, estimator::k3,
                                               estimator::abs};

inline constexpr std::string_view to_string(estimator e) {
  switch (e) {
    case estimator::k1: return "k1";
    case estimator::k2: return "k2";
    case estimator::k3: return "k3";
    case estimator::abs: return "abs";
  }
  return "?";
}

namespace detail {
/// The scalar overloads take floating-point numbers only, so that Eigen arrays pick the
/// array overloads.
template <class T>
using scalar_only = std::enable_if_t<std::is_floating_point_v<T>, T>;

/// Largest argument given to exp anywhere in the library: exp of it times another such
/// factor stays below the largest finite T (float: 43.36, double: 353.9).
template <class T>
inline T exp_bound() {
  return std::log(std::numeric_limits<T>::max()) / T(2) - T(1);
}
/// Largest |s| fed to a polynomial estimator: k2(s) times a weight exp(exp_bound) stays
/// finite (float: about 2.6e9).
template <class T>
inline T polynomial_bound() {
  return std::exp(exp_bound<T>() / T(2));
}
}  // namespace detail

/// k1(s) = s: unbiased for KL(pi||ref) on-policy, can be negative.
struct k1 {
  static constexpr estimator id = estimator::k1;
  template <class T> static detail::scalar_only<T> value(T s) { return s; }
  template <class T> static detail::scalar_only<T> derivative(T) { return T(1); }
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) {
    return s.derived() * typename D::Scalar(1);
  }
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) {
    return D::PlainObject::Constant(s.rows(), s.cols(), typename D::Scalar(1));
  }
  /// The range of s on which value and derivative are finite with room for a weight.
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// k2(s) = s^2 / 2: biased (equal to KL to second order), >= 0; k2'(s) = s.
struct k2 {
  static constexpr estimator id = estimator::k2;
  template <class T> static detail::scalar_only<T> value(T s) { return s * s * T(0.5); }
  template <class T> static detail::scalar_only<T> derivative(T s) { return s; }
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) {
    return s.square() * typename D::Scalar(0.5);
  }
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) {
    return s.derived() * typename D::Scalar(1);
  }
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

namespace detail {
/// Below this |s|, k3 is summed from its Taylor series: expm1(-s) + s still cancels there
/// (its error is about ulp(s) while k3 is about s^2/2).
inline constexpr double k3_series_radius = 0.5;

constexpr double factorial(int n) { return n <= 1 ? 1.0 : n * factorial(n - 1); }

/// sum_{j=J}^{N} (-x)^(j-J) / (j+2)! by Horner's rule, as one expression (no temporaries).
template <class T, int J, int N, class X>
auto k3_horner(const X& x) {
  constexpr double c = 1.0 / factorial(J + 2);
  if constexpr (J == N)
    return x * T(0) + T(c);
  else
    return T(c) - x * k3_horner<T, J + 1, N>(x);
}

/// k3(x) = x^2 sum_{j>=0} (-x)^j / (j+2)! for |x| <= 0.5, with enough terms for full
/// precision (float 9, double 16: the first omitted term is below eps * x^2 / 2).
template <class T, class X>
auto k3_series(const X& x) {
  constexpr int last = std::is_same_v<T, float> ? 8 : 15;
  return x * x * k3_horner<T, 0, last>(x);
}
}  // namespace detail

/// k3(s) = exp(-s) - 1 + s: unbiased for KL(pi||ref), >= 0; k3'(s) = 1 - exp(-s),
/// computed as -expm1(-s). The value is expm1(-s) + s for |s| > 0.5 and its Taylor series
/// below, so that it keeps full relative precision as s -> 0 (never exp(-s) - 1 + s).
struct k3 {
  static constexpr estimator id = estimator::k3;
  template <class T> static detail::scalar_only<T> value(T s) {
    return std::abs(s) < T(detail::k3_series_radius) ? T(detail::k3_series<T>(s))
                                                      : std::expm1(-s) + s;
  }
  template <class T> static detail::scalar_only<T> derivative(T s) { return -std::expm1(-s); }
  /// Array forms, one exp per element: for |s| < 0.5 the series k3 = s^2 P(s) and
  /// k3' = s - k3 (no cancellation there: k3 << s); beyond, k3' = 1 - exp(-s) and
  /// k3 = s - k3', where the rounding of exp(-s) costs at most a few ulp (k3 >= 0.1 there).
  /// Both branches are evaluated (vectorised, one expression, no temporaries) and blended by
  /// a weight that is exactly 1 for |s| < 0.5 and 0 otherwise: r - |s| is 0 or at least
  /// ulp(0.5), and 2^64 times it saturates to 1 (a comparison cast to T would stop Eigen
  /// from vectorising). The series gets s clamped to its radius so that it stays finite.
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) {
    using T = typename D::Scalar;
    const auto w = series_weight(s);
    return w * (s - detail::k3_series<T>(clamped(s))) + (T(1) - w) * (T(1) - (-s).exp());
  }
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) {
    return value_given_derivative(s, derivative(s));
  }
  /// k3 from s and k3'(s) already computed by derivative(): saves the exp when a kernel
  /// needs both.
  template <class D, class G>
  static auto value_given_derivative(const Eigen::ArrayBase<D>& s, const Eigen::ArrayBase<G>& d) {
    using T = typename D::Scalar;
    const auto w = series_weight(s);
    return w * detail::k3_series<T>(clamped(s)) + (T(1) - w) * (s - d);
  }
  template <class D> static auto series_weight(const Eigen::ArrayBase<D>& s) {
    using T = typename D::Scalar;
    const T r = T(detail::k3_series_radius);
    return ((r - s.abs()) * T(18446744073709551616.0)).max(T(0)).min(T(1));
  }
  template <class D> static auto clamped(const Eigen::ArrayBase<D>& s) {
    using T = typename D::Scalar;
    const T r = T(detail::k3_series_radius);
    return s.max(-r).min(r);
  }
  /// exp(-s) must stay finite with room for a weight: s >= -exp_bound.
  template <class T> static T lowest_safe() { return -detail::exp_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// abs(s) = |s|; derivative sign(s), 0 at s = 0 (as autograd gives).
struct abs {
  static constexpr estimator id = estimator::abs;
  template <class T> static detail::scalar_only<T> value(T s) { return std::abs(s); }
  template <class T> static detail::scalar_only<T> derivative(T s) { return T((s > T(0)) - (s < T(0))); }
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) { return s.abs(); }
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) { return s.sign(); }
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// Calls f(Tag{}) with the tag type of a runtime estimator: the one place where a runtime
/// estimator becomes a compile-time one.
template <class F>
decltype(auto) visit(estimator e, F&& f) {
  switch (e) {
    case estimator::k1: return f(k1{});
    case estimator::k2: return f(k2{});
    case estimator::k3: return f(k3{});
    case estimator::abs: break;
  }
  return f(abs{});
}

/// Scalar reference: k(s) for a runtime estimator.
template <class T>
T value(estimator e, T s) {
  return visit(e, [s](auto tag) { return decltype(tag)::value(s); });
}

/// Scalar reference: k'(s) for a runtime estimator.
template <class T>
T derivative(estimator e, T s) {
  return visit(e, [s](auto tag) { return decltype(tag)::derivative(s); });
}

}  // namespace klgrad
