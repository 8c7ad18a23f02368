// Tests of estimators.hpp: derivatives against central differences, array forms against the
// scalar reference, the expm1 form of k3 near 0, and the guard bounds.
#include <klgrad/core/estimators.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using namespace klgrad;

TEMPLATE_TEST_CASE("estimators: k'(s) matches a central difference of k(s)", "[estimators]",
                   float, double) {
  using T = TestType;
  // Central difference error ~ h^2 k''' + eps k / h; h = eps^(1/3) balances them.
  const T h = std::cbrt(std::numeric_limits<T>::epsilon());
  const T tol = std::is_same_v<T, float> ? T(2e-2) : T(1e-8);
  for (estimator e : all_estimators)
    for (T s : {T(-3), T(-1), T(-0.3), T(0.2), T(0.7), T(2.5)}) {
      const T fd = (klgrad::value(e, T(s + h)) - klgrad::value(e, T(s - h))) / (T(2) * h);
      const T d = klgrad::derivative(e, s);
      INFO(to_string(e) << " at s=" << s);
      CHECK(std::abs(fd - d) <= tol * std::max(T(1), std::abs(d)));
    }
}

TEMPLATE_TEST_CASE("estimators: array forms agree with the scalar reference", "[estimators]",
                   float, double) {
  using T = TestType;
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  A s = A::LinSpaced(4001, T(-40), T(40));
  s(2000) = T(0);
  const T eps = std::numeric_limits<T>::epsilon();
  for (estimator e : all_estimators)
    visit(e, [&](auto tag) {
      using E = decltype(tag);
      const A v = E::value(s), d = E::derivative(s);
      for (Eigen::Index i = 0; i < s.size(); ++i) {
        const T rv = E::value(s(i)), rd = E::derivative(s(i));
        INFO(to_string(e) << " at s=" << s(i));
        // Eigen's vectorised expm1 differs from libm's by a few ulp (documented bound: 4).
        CHECK(std::abs(v(i) - rv) <= 4 * eps * std::abs(rv) + std::numeric_limits<T>::min());
        CHECK(std::abs(d(i) - rd) <= 4 * eps * std::abs(rd) + std::numeric_limits<T>::min());
      }
    });
}

TEMPLATE_TEST_CASE("estimators: k3 keeps full relative precision near s = 0", "[estimators]",
                   float, double) {
  using T = TestType;
  // Oracle: the Taylor series of exp(-x) - 1 + x and of 1 - exp(-x), 25 terms in long
  // double (the first omitted term is below 1e-30 relative for |x| <= 0.6).
  auto series = [](long double x, int first) {
    long double term = 1, sum = 0;
    for (int n = 1; n <= 26; ++n) {
      term *= -x / n;
      if (n >= first) sum += term;
    }
    return sum;
  };
  const T eps = std::numeric_limits<T>::epsilon();
  for (T s : {T(1e-3), T(-1e-3), T(1e-6), T(-1e-6), T(1e-12), T(0.3), T(-0.45), T(0.5), T(0.51),
              T(-0.6)}) {
    const long double x = s;
    const long double value = series(x, 2), derivative = -series(x, 1);
    INFO("s = " << s);
    CHECK(std::abs(k3::value(s) - value) <= 4 * eps * std::abs(value));
    CHECK(std::abs(k3::derivative(s) - derivative) <= 2 * eps * std::abs(derivative));
  }
}

TEMPLATE_TEST_CASE("estimators: values at the guard bounds are finite with room for a weight",
                   "[estimators]", float, double) {
  using T = TestType;
  const T wmax = std::exp(detail::exp_bound<T>());
  for (estimator e : all_estimators)
    visit(e, [&](auto tag) {
      using E = decltype(tag);
      for (T s : {E::template lowest_safe<T>(), E::template highest_safe<T>()}) {
        INFO(to_string(e) << " at s=" << s);
        CHECK(std::isfinite(wmax * E::value(s)));
        CHECK(std::isfinite(wmax * E::derivative(s)));
        CHECK(std::isfinite(wmax * E::value(s) + wmax * E::derivative(s)));
      }
    });
}

TEST_CASE("estimators: abs has derivative sign(s) with 0 at 0, as autograd", "[estimators]") {
  CHECK(abs::derivative(0.0) == 0.0);
  CHECK(abs::derivative(-0.5) == -1.0);
  CHECK(abs::derivative(2.0) == 1.0);
}

TEMPLATE_TEST_CASE("estimators: k3 array forms follow libm to the edges of the exponent range",
                   "[estimators]", float, double) {
  using T = TestType;
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  // Around e^-s's overflow (float -88.72, double -709.78: the vector form caps the
  // reduction's 2^n there), its underflow, and far beyond both. Oracle: libm's expm1.
  const T top = std::numeric_limits<T>::max();
  A s;
  if constexpr (std::is_same_v<T, float>)
    s = A{{-top, -1e30f, -700, -89.5f, -88.73f, -88.7f, -88.5f, -88.3f, -87, 86, 87, 88, 104,
           1e19f, top}};
  else
    s = A{{-top, -1e300, -711, -709.8, -709.7, -709.5, -709, -700, 700, 708, 709, 746, 1e300,
           top}};
  const A v = k3::value(s), d = k3::derivative(s);
  const T eps = std::numeric_limits<T>::epsilon();
  for (Eigen::Index i = 0; i < s.size(); ++i) {
    const T rv = k3::value(s(i)), rd = k3::derivative(s(i));
    INFO("s = " << s(i) << ": value " << v(i) << " (libm " << rv << "), derivative " << d(i)
                << " (libm " << rd << ")");
    if (std::isinf(rv)) CHECK(v(i) == rv);
    else CHECK(std::abs(v(i) - rv) <= 4 * eps * std::abs(rv));
    if (std::isinf(rd)) CHECK(d(i) == rd);
    else CHECK(std::abs(d(i) - rd) <= 4 * eps * std::abs(rd));
  }
}
