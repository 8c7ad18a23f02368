// The k-estimators of the log-ratio s = log pi - log ref: value k(s) and derivative k'(s),
// as scalar reference functions and as Eigen array expressions.
#pragma once

#include "../support/names.hpp"

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <string_view>
#include <type_traits>

namespace klgrad {

/// Runtime name of an estimator (the spec grammar's EST).
enum class estimator { k1, k2, k3, abs };

/// Each estimator's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<estimator> estimator_names[] = {
    {estimator::k1, "k1"},
    {estimator::k2, "k2"},
    {estimator::k3, "k3"},
    {estimator::abs, "abs"}};

inline constexpr auto all_estimators = detail::values_in(estimator_names);

inline constexpr std::string_view to_string(estimator x) {
  return detail::name_in(estimator_names, x);
}

/// T for a floating-point T, no overload otherwise: an estimator's scalar value(T) and
/// derivative(T) return it, so that Eigen arrays pick the array forms of estimator_base.
template <class T>
using scalar_only = std::enable_if_t<std::is_floating_point_v<T>, T>;

namespace detail {
using klgrad::scalar_only;

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

/// A function of s as a combination of 1, s, rho = e^-s, s^2/2, |s| and sign(s): the basis
/// on which explain() knows every function's expected score-function gradient. An estimator
/// that can, says its value and derivative on it (value_form, derivative_form); explain()
/// gives the verdicts of one that cannot as unknown (the oracles still measure it).
struct closed_form {
  double one = 0, s = 0, rho = 0, half_square = 0, abs = 0, sign = 0;
};

namespace detail {
/// Which half of an estimator a vector functor computes.
enum class part { value, derivative };

/// The array forms of every estimator: one Eigen functor that calls the estimator's packet
/// functions (E::packet_value, E::packet_derivative), which also serve the fused kernel of
/// evaluate(). The scalar operator() runs the same packet code on a scalar, so that the
/// vectorised body and Eigen's scalar tail of an array agree bit for bit.
template <class E, part Part, class T>
struct estimator_op {
  T operator()(const T& s) const { return packetOp(s); }
  template <class P>
  P packetOp(const P& s) const {
    if constexpr (Part == part::value)
      return E::packet_value(s);
    else
      return E::packet_derivative(s);
  }
};

template <class E, part Part, class D>
auto apply(const Eigen::ArrayBase<D>& s) {
  return s.unaryExpr(estimator_op<E, Part, typename D::Scalar>());
}
}  // namespace detail

/// Shared by the estimators: array forms through detail::estimator_op, and by default the
/// value and derivative of a packet computed separately.
template <class E>
struct estimator_base {
  template <class D> static auto value(const Eigen::ArrayBase<D>& s) {
    return detail::apply<E, detail::part::value>(s);
  }
  template <class D> static auto derivative(const Eigen::ArrayBase<D>& s) {
    return detail::apply<E, detail::part::derivative>(s);
  }
  template <class P> static void packet_both(const P& s, P& value, P& derivative) {
    value = E::packet_value(s);
    derivative = E::packet_derivative(s);
  }
};

/// k1(s) = s: unbiased for KL(pi||ref) on-policy, can be negative.
struct k1 : estimator_base<k1> {
  static constexpr estimator id = estimator::k1;
  static constexpr bool derivative_zero_at_zero = false;  // k1'(0) = 1
  static constexpr closed_form value_form{0, 1, 0, 0, 0, 0};       // s
  static constexpr closed_form derivative_form{1, 0, 0, 0, 0, 0};  // 1
  template <class T> static detail::scalar_only<T> value(T s) { return s; }
  template <class T> static detail::scalar_only<T> derivative(T) { return T(1); }
  using estimator_base<k1>::value;
  using estimator_base<k1>::derivative;
  template <class P> static P packet_value(const P& s) { return s; }
  template <class P> static P packet_derivative(const P&) {
    return Eigen::internal::pset1<P>(typename Eigen::internal::unpacket_traits<P>::type(1));
  }
  /// The range of s on which value and derivative are finite with room for a weight.
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// k2(s) = s^2 / 2: biased (equal to KL to second order), >= 0; k2'(s) = s.
struct k2 : estimator_base<k2> {
  static constexpr estimator id = estimator::k2;
  static constexpr bool derivative_zero_at_zero = true;
  static constexpr closed_form value_form{0, 0, 0, 1, 0, 0};       // s^2/2
  static constexpr closed_form derivative_form{0, 1, 0, 0, 0, 0};  // s
  template <class T> static detail::scalar_only<T> value(T s) { return s * s * T(0.5); }
  template <class T> static detail::scalar_only<T> derivative(T s) { return s; }
  using estimator_base<k2>::value;
  using estimator_base<k2>::derivative;
  template <class P> static P packet_value(const P& s) {
    using namespace Eigen::internal;
    return pmul(pmul(s, s), pset1<P>(typename unpacket_traits<P>::type(0.5)));
  }
  template <class P> static P packet_derivative(const P& s) { return s; }
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

namespace detail {
/// Below this |s|, k3 is summed from its Taylor series: expm1(-s) + s still cancels there
/// (its error is about ulp(s) while k3 is about s^2/2).
inline constexpr double k3_series_radius = 0.5;

constexpr double factorial(int n) { return n <= 1 ? 1.0 : n * factorial(n - 1); }

/// Number of Taylor terms of q(u) = k3(u) / u^2 = sum_j (-u)^j / (j+2)! for |u| <= 0.5:
/// the fewest m whose first omitted term 0.5^m / (m+2)! is below eps / 6. On that interval
/// q >= q(0.5) > 0.42 and the omitted tail is below 1.1 times its first term, so the
/// truncation error stays below eps * q / 2, half an ulp (float 8, double 14).
template <class T>
constexpr int series_terms_for_k3() {
  int m = 0;
  double term = 1.0 / factorial(2);  // 0.5^m / (m+2)!
  while (!(term < double(std::numeric_limits<T>::epsilon()) / 6.0)) {
    ++m;
    term *= 0.5 / double(m + 2);
  }
  return m;
}
template <class T>
inline constexpr int k3_terms = series_terms_for_k3<T>();
static_assert(k3_terms<float> == 8 && k3_terms<double> == 14);

/// The series' coefficients (-1)^j / (j+2)!, rounded to T at compile time.
template <class T>
struct k3_coefficients {
  T c[k3_terms<T>];
  constexpr k3_coefficients() : c{} {
    for (int j = 0; j < k3_terms<T>; ++j) c[j] = T((j % 2 ? -1.0 : 1.0) / factorial(j + 2));
  }
};
template <class T>
inline constexpr k3_coefficients<T> k3_coefficient_table{};

/// k3(u) = u^2 q(u), q(u) = sum_j (-u)^j / (j+2)! by Horner's rule, for |u| <= 0.5 and a
/// scalar or an Eigen packet.
template <class T, class P>
P k3_series(const P& u) {
  using namespace Eigen::internal;
  const T* c = k3_coefficient_table<T>.c;
  P q = pset1<P>(c[k3_terms<T> - 1]);
  for (int j = k3_terms<T> - 2; j >= 0; --j) q = pmadd(u, q, pset1<P>(c[j]));
  return pmul(pmul(u, u), q);
}

/// Constants of k3's argument reduction -s = n ln2 - u (Cody and Waite: n ln2_hi is exact
/// for the n that occur, so u is exact up to ln2_lo's rounding).
template <class T> struct k3_reduction;
template <> struct k3_reduction<float> {
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  /// e^-s for s above this is under the smallest normal float: expm1(-s) rounds to -1.
  static constexpr float ceiling = 87.0f;
  /// e^-s for s below this overflows (and so does the formula: k3 = inf, k3' = -inf).
  static constexpr float floor = -89.0f;
  /// The largest n with 2^n finite: n stays there near the overflow threshold (and |u| < 0.7
  /// while k3 is finite).
  static constexpr float max_exponent = 127.0f;
};
template <> struct k3_reduction<double> {
  static constexpr double ln2_hi = 6.93147180369123816490e-01,
                          ln2_lo = 1.90821492927058770002e-10;
  static constexpr double ceiling = 708.0;
  static constexpr double floor = -710.0;
  static constexpr double max_exponent = 1023.0;
};

/// 2^n for integer-valued n with 2^n a normal number (NaN for a NaN n).
template <class P>
P exp2_integer(const P& n) {
  using namespace Eigen::internal;
  using T = typename unpacket_traits<P>::type;
  if constexpr (std::is_same_v<P, T>)
    return std::isnan(n) ? n : std::ldexp(T(1), int(n));
  else if constexpr (std::is_same_v<T, float>)
    return pldexp_fast_impl<P>::run(pset1<P>(T(1)), n);
  else
    return pldexp(pset1<P>(T(1)), n);
}
#ifdef EIGEN_VECTORIZE_AVX512
// AVX-512 scales by a power of two in one instruction (Eigen's double pldexp takes ~20).
inline Eigen::internal::Packet16f exp2_integer(const Eigen::internal::Packet16f& n) {
  return _mm512_scalef_ps(_mm512_set1_ps(1.0f), n);
}
inline Eigen::internal::Packet8d exp2_integer(const Eigen::internal::Packet8d& n) {
  return _mm512_scalef_pd(_mm512_set1_pd(1.0), n);
}
#endif

/// k3(s) and k3'(s) of a scalar or a packet with one argument reduction and one series.
/// With -s = n ln2 - u, |u| <= 0.5 (n = 0 for |s| < 0.5, so that u = s exactly there;
/// within ln2 / 2 of the overflow threshold, where n is capped, |u| < 0.7):
///   expm1(-u) = k3(u) - u,  expm1(-s) = 2^n expm1(-u) + (2^n - 1),
///   k3'(s) = -expm1(-s) = (1 - 2^n) - 2^n (k3(u) - u),  k3(s) = k3(u) if n = 0, else s - k3'(s).
/// The n = 0 value is the series itself (full relative precision as s -> 0); beyond
/// |s| = 0.5, k3 >= 0.1 and the difference loses at most a few ulp.
template <class P>
void k3_packet(const P& s, P& value, P& derivative) {
  using namespace Eigen::internal;
  using T = typename unpacket_traits<P>::type;
  using K = k3_reduction<T>;
  const P small = pcmp_lt(pabs(s), pset1<P>(T(k3_series_radius)));
  const P sr = pmax(pmin(s, pset1<P>(K::ceiling)), pset1<P>(K::floor));
  const P nearest = pfloor(pmadd(sr, pset1<P>(T(-1.44269504088896341)), pset1<P>(T(0.5))));
  const P n = pselect(small, pset1<P>(T(0)), pmin(nearest, pset1<P>(K::max_exponent)));
  const P u = pmadd(n, pset1<P>(K::ln2_lo), pmadd(n, pset1<P>(K::ln2_hi), sr));
  const P k3u = k3_series<T>(u);
  const P scale = exp2_integer(n);
  derivative = pmadd(pnegate(scale), psub(k3u, u), psub(pset1<P>(T(1)), scale));
  value = pselect(small, k3u, psub(s, derivative));
}
}  // namespace detail

/// k3(s) = exp(-s) - 1 + s: unbiased for KL(pi||ref), >= 0; k3'(s) = 1 - exp(-s),
/// computed as -expm1(-s). The value is expm1(-s) + s for |s| > 0.5 and its Taylor series
/// below, so that it keeps full relative precision as s -> 0 (never exp(-s) - 1 + s).
struct k3 : estimator_base<k3> {
  static constexpr estimator id = estimator::k3;
  static constexpr bool derivative_zero_at_zero = true;
  static constexpr closed_form value_form{-1, 1, 1, 0, 0, 0};       // rho - 1 + s
  static constexpr closed_form derivative_form{1, 0, -1, 0, 0, 0};  // 1 - rho
  template <class T> static detail::scalar_only<T> value(T s) {
    return std::abs(s) < T(detail::k3_series_radius) ? detail::k3_series<T>(s)
                                                      : std::expm1(-s) + s;
  }
  template <class T> static detail::scalar_only<T> derivative(T s) { return -std::expm1(-s); }
  using estimator_base<k3>::value;
  using estimator_base<k3>::derivative;
  /// Vector forms (detail::k3_packet): one argument reduction and one polynomial give both.
  template <class P> static void packet_both(const P& s, P& value, P& derivative) {
    detail::k3_packet(s, value, derivative);
  }
  template <class P> static P packet_value(const P& s) {
    P v, d;
    detail::k3_packet(s, v, d);
    return v;
  }
  template <class P> static P packet_derivative(const P& s) {
    P v, d;
    detail::k3_packet(s, v, d);
    return d;
  }
  /// exp(-s) must stay finite with room for a weight: s >= -exp_bound.
  template <class T> static T lowest_safe() { return -detail::exp_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// abs(s) = |s|; derivative sign(s), 0 at s = 0 (as autograd gives).
struct abs : estimator_base<abs> {
  static constexpr estimator id = estimator::abs;
  static constexpr bool derivative_zero_at_zero = true;
  static constexpr closed_form value_form{0, 0, 0, 0, 1, 0};       // |s|
  static constexpr closed_form derivative_form{0, 0, 0, 0, 0, 1};  // sign(s)
  template <class T> static detail::scalar_only<T> value(T s) { return std::abs(s); }
  template <class T> static detail::scalar_only<T> derivative(T s) { return T((s > T(0)) - (s < T(0))); }
  using estimator_base<abs>::value;
  using estimator_base<abs>::derivative;
  template <class P> static P packet_value(const P& s) { return Eigen::internal::pabs(s); }
  template <class P> static P packet_derivative(const P& s) {
    using namespace Eigen::internal;
    using T = typename unpacket_traits<P>::type;
    const P zero = pset1<P>(T(0)), one = pset1<P>(T(1));
    return psub(pselect(pcmp_lt(zero, s), one, zero), pselect(pcmp_lt(s, zero), one, zero));
  }
  template <class T> static T lowest_safe() { return -detail::polynomial_bound<T>(); }
  template <class T> static T highest_safe() { return detail::polynomial_bound<T>(); }
};

/// The estimator concept. A type E is an estimator of the log-ratio s = log pi - log ref when
/// it has, for T = float and double and P = Eigen's packet of T:
///   * E::value(T s) and E::derivative(T s): k(s) and k'(s) as scalars;
///   * E::packet_value(P), E::packet_derivative(P) and E::packet_both(P, P&, P&): the same on
///     packets (the fused kernel's forms; estimator_base<E> gives packet_both and the Eigen
///     array forms E::value(array), E::derivative(array));
///   * E::lowest_safe<T>() and E::highest_safe<T>(): the range of s on which value and
///     derivative stay finite with room for a weight (the kernel's guard keeps s inside);
///   * static constexpr bool derivative_zero_at_zero: whether k'(0) = 0.
/// Optionally (has_closed_form), static constexpr closed_form value_form and derivative_form:
/// k and k' on explain()'s basis, for its verdicts.
/// And it must meet, which no type check can see: k(0) = 0 (pi = ref costs nothing), and
/// k'(0) = 0 exactly when derivative_zero_at_zero says so (the kernel then skips masking the
/// gradient of masked tokens, whose s is 0).
template <class E, class = void>
struct has_scalar_forms : std::false_type {};
template <class E>
struct has_scalar_forms<
    E, std::void_t<decltype(float{E::value(0.0f)}), decltype(float{E::derivative(0.0f)}),
                   decltype(double{E::value(0.0)}), decltype(double{E::derivative(0.0)})>>
    : std::true_type {};

namespace detail {
/// The packet of T on this build (the kernel's vector type).
template <class T>
using packet_of = typename Eigen::internal::packet_traits<T>::type;

template <class E, class T>
using packet_forms = decltype(E::packet_value(std::declval<packet_of<T>>()),
                              E::packet_derivative(std::declval<packet_of<T>>()),
                              E::packet_both(std::declval<const packet_of<T>&>(),
                                             std::declval<packet_of<T>&>(),
                                             std::declval<packet_of<T>&>()));
}  // namespace detail

template <class E, class = void>
struct has_packet_forms : std::false_type {};
template <class E>
struct has_packet_forms<
    E, std::void_t<detail::packet_forms<E, float>, detail::packet_forms<E, double>>>
    : std::true_type {};

template <class E, class = void>
struct has_safe_range : std::false_type {};
template <class E>
struct has_safe_range<E, std::void_t<decltype(float{E::template lowest_safe<float>()}),
                                     decltype(float{E::template highest_safe<float>()}),
                                     decltype(double{E::template lowest_safe<double>()}),
                                     decltype(double{E::template highest_safe<double>()})>>
    : std::true_type {};

template <class E, class = void>
struct has_runtime_id : std::false_type {};
template <class E>
struct has_runtime_id<E, std::void_t<decltype(estimator{E::id})>> : std::true_type {};

template <class E, class = void>
struct has_zero_traits : std::false_type {};
template <class E>
struct has_zero_traits<E, std::void_t<decltype(bool{E::derivative_zero_at_zero})>>
    : std::true_type {};

template <class E, class = void>
struct has_closed_form : std::false_type {};
template <class E>
struct has_closed_form<E, std::void_t<decltype(closed_form{E::value_form}),
                                      decltype(closed_form{E::derivative_form})>>
    : std::true_type {};

template <class E>
inline constexpr bool is_estimator_v = has_scalar_forms<E>::value &&
                                       has_packet_forms<E>::value &&
                                       has_safe_range<E>::value && has_zero_traits<E>::value;

/// Fails to compile, naming the missing part, unless E is an estimator.
template <class E>
constexpr bool require_estimator() {
  static_assert(has_scalar_forms<E>::value,
                "klgrad: an estimator needs static value(T s) and derivative(T s) for float "
                "and double");
  static_assert(has_packet_forms<E>::value,
                "klgrad: an estimator needs static packet_value(P) and packet_derivative(P) for "
                "Eigen packets P (derive from klgrad::estimator_base<E> for packet_both)");
  static_assert(has_safe_range<E>::value,
                "klgrad: an estimator needs static lowest_safe<T>() and highest_safe<T>(), "
                "the range of s where it stays finite");
  static_assert(has_zero_traits<E>::value,
                "klgrad: an estimator needs static constexpr bool derivative_zero_at_zero");
  return true;
}

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
// The estimator functors vectorise wherever Eigen's floor and ldexp do.
template <class E, klgrad::detail::part Part, class T>
struct functor_traits<klgrad::detail::estimator_op<E, Part, T>> {
  enum { Cost = 30 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasFloor };
};
}  // namespace Eigen::internal
