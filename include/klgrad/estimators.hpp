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

/// Number of Taylor terms of k3(x) / x^2 = sum_j (-x)^j / (j+2)! for |x| <= 0.5: the first
/// omitted term is below eps * x^2 / 2 (float 9, double 16).
template <class T>
inline constexpr int k3_terms = std::is_same_v<T, float> ? 9 : 16;

/// k3(x) = x^2 sum_j (-x)^j / (j+2)! by Horner's rule, for a scalar or an Eigen packet.
template <class T, class P, class Set, class Madd, class Mul>
P k3_series(const P& x, Set set, Madd madd, Mul mul) {
  P p = set(T(1.0 / factorial(k3_terms<T> + 1)));
  for (int j = k3_terms<T> - 2; j >= 0; --j) p = madd(mul(x, p), set(T(-1)), set(T(1.0 / factorial(j + 2))));
  return mul(mul(x, x), p);
}

template <class T>
T k3_series(T x) {
  return k3_series<T>(x, [](T v) { return v; }, [](T a, T b, T c) { return a * b + c; },
                      [](T a, T b) { return a * b; });
}

/// The k3 array kernels as single Eigen functors (a nested expression for the series would
/// be rebuilt, O(terms^2) in size, at every call). Both branches are evaluated and blended
/// by a weight that is exactly 1 for |s| < 0.5 and 0 otherwise: r - |s| is 0 or at least
/// ulp(0.5), and 2^64 times it saturates to 1 (keeps the packet path branch-free). The
/// series gets s clamped to its radius so that the unused branch stays finite.
template <class T>
struct k3_kernel {
  static constexpr T radius = T(k3_series_radius);
  static constexpr T steep = T(18446744073709551616.0);
  template <class P>
  static P weight(const P& s) {
    using namespace Eigen::internal;
    return pmin(pmax(pmul(psub(pset1<P>(radius), pabs(s)), pset1<P>(steep)), pset1<P>(T(0))),
                pset1<P>(T(1)));
  }
  template <class P>
  static P series(const P& s) {
    using namespace Eigen::internal;
    const P x = pmin(pmax(s, pset1<P>(-radius)), pset1<P>(radius));
    return k3_series<T>(x, [](T v) { return pset1<P>(v); },
                        [](const P& a, const P& b, const P& c) { return pmadd(a, b, c); },
                        [](const P& a, const P& b) { return pmul(a, b); });
  }
  template <class P>
  static P blend(const P& w, const P& small, const P& large) {
    using namespace Eigen::internal;
    return padd(pmul(w, small), pmul(psub(pset1<P>(T(1)), w), large));
  }
};

/// k3'(s): s - k3(s) by the series below 0.5, 1 - exp(-s) beyond.
template <class T>
struct k3_derivative_op {
  T operator()(const T& s) const { return packetOp(s); }
  template <class P>
  P packetOp(const P& s) const {
    using namespace Eigen::internal;
    using K = k3_kernel<T>;
    return K::blend(K::weight(s), psub(s, K::series(s)),
                    psub(pset1<P>(T(1)), pexp(pnegate(s))));
  }
};

/// k3(s) from s and d = k3'(s): the series below 0.5, s - d beyond.
template <class T>
struct k3_value_op {
  T operator()(const T& s, const T& d) const { return packetOp(s, d); }
  template <class P>
  P packetOp(const P& s, const P& d) const {
    using namespace Eigen::internal;
    using K = k3_kernel<T>;
    return K::blend(K::weight(s), K::series(s), psub(s, d));
  }
};
}  // namespace detail

/// k3(s) = exp(-s) - 1 + s: unbiased for KL(pi||ref), >= 0; k3'(s) = 1 - exp(-s),
/// computed as -expm1(-s). The value is expm1(-s) + s for |s| > 0.5 and its Taylor series
/// below, so that it keeps full relative precision as s -> 0 (never exp(-s) - 1 + s).
struct k3 {
  static constexpr estimator id = estimator::k3;
  template <class T> static detail::scalar_only<T> value(T s) {
    return std::abs(s) < T(detail::k3_series_radius) ? detail::k3_series(s)
                                                      : std::expm1(-s) + s;
  }
  template <class T> static detail::scalar_only<T> derivative(T s) { return -std::expm1(-s); }
  /// Array forms, one exp per element: for |s| < 0.5 the series k3 = s^2 P(s) and
  /// k3' = s - k3 (no cancellation there: k3 << s); beyond, k3' = 1 - exp(-s) and
  /// k3 = s - k3', where the rounding of exp(-s) costs at most a few ulp (k3 >= 0.1 there).
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) {
    return s.unaryExpr(detail::k3_derivative_op<typename D::Scalar>());
  }
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) {
    return value_given_derivative(s, derivative(s));
  }
  /// k3 from s and k3'(s) already computed by derivative(): saves the exp when a kernel
  /// needs both.
  template <class D, class G>
  static auto value_given_derivative(const Eigen::ArrayBase<D>& s, const Eigen::ArrayBase<G>& d) {
    return s.binaryExpr(d, detail::k3_value_op<typename D::Scalar>());
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

namespace Eigen::internal {
// The k3 functors vectorise wherever Eigen's exp does (the value one needs no exp).
template <class T>
struct functor_traits<klgrad::detail::k3_derivative_op<T>> {
  enum { Cost = 40 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp };
};
template <class T>
struct functor_traits<klgrad::detail::k3_value_op<T>> {
  enum { Cost = 25 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::Vectorizable };
};
}  // namespace Eigen::internal
