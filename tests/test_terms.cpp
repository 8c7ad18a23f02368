// Tests of the estimator concept (is_estimator_v, require_estimator, the zero traits), of
// the term types in_reward<E>, as_loss<E>, both<E>, as_loss<Ev, Eg> (placement.hpp) and of
// the adapter type score_function<Term, Weighting> (score_function.hpp): coefficients
// against closed forms in long double, array forms against scalar forms, and against the
// runtime kernel (evaluate with agg=token-sum, beta=1, whose coef is the term's coefficient
// itself, times the weights).
#include <klgrad/klgrad.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using namespace klgrad;

namespace {

struct missing_zero_trait : estimator_base<missing_zero_trait> {
  template <class T> static detail::scalar_only<T> value(T s) { return s; }
  template <class T> static detail::scalar_only<T> derivative(T) { return T(1); }
  using estimator_base<missing_zero_trait>::value;
  using estimator_base<missing_zero_trait>::derivative;
  template <class P> static P packet_value(const P& s) { return s; }
  template <class P> static P packet_derivative(const P& s) { return s; }
  template <class T> static T lowest_safe() { return T(-1); }
  template <class T> static T highest_safe() { return T(1); }
};

constexpr double grid[] = {-30, -5, -1, -1e-3, 0, 1e-3, 0.5, 3, 20};

}  // namespace

static_assert(is_estimator_v<k1> && is_estimator_v<k2> && is_estimator_v<k3> &&
              is_estimator_v<klgrad::abs>);
static_assert(!is_estimator_v<int> && !is_estimator_v<spec>);
static_assert(!is_estimator_v<missing_zero_trait> && has_scalar_forms<missing_zero_trait>::value &&
              has_packet_forms<missing_zero_trait>::value && !has_zero_traits<missing_zero_trait>::value);
static_assert(std::is_same_v<as_loss<k3>, kl_term<placement::as_loss, k3, k3>>);

TEMPLATE_TEST_CASE("estimator concept: k(0) = 0, and k'(0) = 0 exactly as the trait says",
                   "[terms]", float, double) {
  using T = TestType;
  auto check = [](auto tag) {
    using E = decltype(tag);
    INFO(to_string(E::id));
    CHECK(E::value(T(0)) == T(0));
    CHECK((E::derivative(T(0)) == T(0)) == E::derivative_zero_at_zero);
  };
  check(k1{});
  check(k2{});
  check(k3{});
  check(klgrad::abs{});
}

TEMPLATE_TEST_CASE("terms: coefficients against closed forms in long double", "[terms]", float,
                   double) {
  using T = TestType;
  const long double eps = std::numeric_limits<T>::epsilon();
  for (double g : grid) {
    const T s = T(g);
    const long double x = s;
    const long double k3v = std::expm1(-x) + x;  // e^-s - 1 + s
    const long double k3d = -std::expm1(-x);     // 1 - e^-s
    // relative: a few roundings of T (the closed forms are evaluated in long double)
    auto close = [&](T got, long double want) {
      return std::abs((long double)got - want) <= 8 * eps * std::abs(want);
    };
    INFO("s = " << s);
    CHECK(close(in_reward<k3>::value(s), k3v));
    CHECK(close(in_reward<k3>::coefficient(s), k3v));
    CHECK(close(as_loss<k3>::value(s), k3v));
    CHECK(close(as_loss<k3>::coefficient(s), k3d));
    // k3 + k3' = s exactly in real numbers (docs/theory.md, table 3); in T the sum of the
    // two rounded parts, which cancel where s is very negative
    CHECK(std::abs((long double)both<k3>::coefficient(s) - x) <=
          8 * eps * (std::abs(k3v) + std::abs(k3d)));
    // verl's k3+: the value of k3, the gradient of k2 (= s)
    CHECK(close(as_loss<k3, k2>::value(s), k3v));
    CHECK(as_loss<k3, k2>::coefficient(s) == s);
    CHECK(in_reward<k1>::coefficient(s) == s);
    CHECK(as_loss<k1>::coefficient(s) == T(1));
    CHECK(as_loss<k2>::coefficient(s) == s);
    CHECK(std::abs((long double)both<k2>::coefficient(s) - (x * x / 2 + x)) <=
          4 * eps * (x * x / 2 + std::abs(x)));
    CHECK(as_loss<klgrad::abs>::coefficient(s) == T((s > 0) - (s < 0)));
  }
}

TEMPLATE_TEST_CASE("terms: the array forms equal the scalar forms", "[terms]", float, double) {
  using T = TestType;
  Eigen::Array<T, Eigen::Dynamic, 1> s(std::size(grid));
  for (Index i = 0; i < s.size(); ++i) s[i] = T(grid[i]);
  const Eigen::Array<T, Eigen::Dynamic, 1> value = both<k3, k2>::value(s);
  const Eigen::Array<T, Eigen::Dynamic, 1> coef = both<k3, k2>::coefficient(s);
  const T eps = std::numeric_limits<T>::epsilon();
  for (Index i = 0; i < s.size(); ++i) {
    INFO("s = " << s[i]);
    // k3's array and scalar forms agree within 4 ulp (docs/api.md); the coefficient adds s
    const T v = both<k3, k2>::value(s[i]), c = both<k3, k2>::coefficient(s[i]);
    CHECK(std::abs(value[i] - v) <= 4 * eps * std::abs(v));
    CHECK(std::abs(coef[i] - c) <= 4 * eps * (std::abs(v) + std::abs(s[i])));
  }
}

TEMPLATE_TEST_CASE("terms: the runtime kernel's coef is the term type's coefficient",
                   "[terms]", float, double) {
  using T = TestType;
  using A = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Index n = Index(std::size(grid));
  A ref = A::Constant(1, n, T(-2)), logp(1, n), value(1, n), coef(1, n);
  for (Index i = 0; i < n; ++i) logp(0, i) = ref(0, i) + T(grid[i]);
  const T eps = std::numeric_limits<T>::epsilon();
  auto check = [&](const char* text, auto term) {
    using Term = decltype(term);
    evaluate(parse_spec(text), padded(logp, ref), value, coef);
    for (Index i = 0; i < n; ++i) {
      const T s = logp(0, i) - ref(0, i);  // the kernel's log-ratio, rounded as it rounds
      // the kernel's packet forms against the scalar forms: 4 ulp of each part
      const T v = Term::value(s), c = Term::coefficient(s);
      const T parts = std::abs(Term::value_estimator::value(s)) +
                      std::abs(Term::gradient_estimator::derivative(s));
      INFO(text << " at s = " << s);
      CHECK(std::abs(value(0, i) - v) <= 4 * eps * std::abs(v));
      CHECK(std::abs(coef(0, i) - c) <= 4 * eps * parts);
    }
  };
  check("k1-in-reward,agg=token-sum", in_reward<k1>{});
  check("k3-in-reward,agg=token-sum", in_reward<k3>{});
  check("k2-as-loss,agg=token-sum", as_loss<k2>{});
  check("k3-as-loss,agg=token-sum", as_loss<k3>{});
  check("abs-as-loss,agg=token-sum", as_loss<klgrad::abs>{});
  check("k3~k2-as-loss,agg=token-sum", as_loss<k3, k2>{});
  check("k3-both,agg=token-sum", both<k3>{});
  check("k1-both,agg=token-sum", both<k1>{});
}

TEMPLATE_TEST_CASE("score_function: the adapter type against closed forms and against the "
                   "kernel's token weights", "[terms]", float, double) {
  using T = TestType;
  const T eps = std::numeric_limits<T>::epsilon();
  // closed forms: u, g the weight and its derivative
  const T s = T(0.3), u = T(1.7), g = T(1.7);
  const T k3v = k3::value(s), k3d = k3::derivative(s);
  CHECK(score_function<as_loss<k3>, weighting::none>::coefficient(s, u, g) == k3d);
  CHECK(score_function<as_loss<k3>, weighting::detached>::coefficient(s, u, g) == u * k3d);
  CHECK(std::abs(score_function<as_loss<k3>, weighting::differentiable>::coefficient(s, u, g) -
                 (g * k3v + u * k3d)) <= 4 * eps * (g * k3v + u * k3d));
  CHECK(score_function<in_reward<k1>, weighting::differentiable>::coefficient(s, u, T(0)) == 0);
  CHECK(score_function<in_reward<k1>, weighting::detached>::coefficient(s, u, T(0)) == u * s);

  // the kernel at token level: u = min(w, C), g = w where differentiable and not truncated
  using A = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  A logp(1, 6), ref(1, 6), behavior(1, 6), value(1, 6), coef(1, 6);
  logp << T(-1.2), T(-0.7), T(-2.1), T(-0.4), T(-3.0), T(-0.9);
  ref << T(-1.0), T(-0.9), T(-1.8), T(-0.5), T(-2.0), T(-1.1);
  behavior << T(-1.1), T(-0.5), T(-2.3), T(-0.4), T(-2.8), T(-1.0);
  auto check = [&](const char* text, auto adapter, double clip) {
    using F = decltype(adapter);
    evaluate(parse_spec(text), padded(logp, ref).with_behavior(behavior), value, coef);
    for (Index i = 0; i < 6; ++i) {
      const T x = logp(0, i) - ref(0, i);
      const T w = std::exp(logp(0, i) - behavior(0, i));
      const bool truncated = w > T(clip);
      const T used = truncated ? T(clip) : w;
      const T grad = F::mode == weighting::differentiable && !truncated ? w : T(0);
      const T want = F::coefficient(x, used, grad);
      using Term = typename F::term;
      const T parts = std::abs(Term::value_estimator::value(x)) * (used + grad) +
                      std::abs(Term::gradient_estimator::derivative(x)) * used;
      INFO(text << " at s = " << x << ", w = " << w);
      CHECK(std::abs(coef(0, i) - want) <= 8 * eps * parts);
    }
  };
  const double none = std::numeric_limits<double>::infinity();
  check("k3-as-loss,is=detached,agg=token-sum", score_function<as_loss<k3>, weighting::detached>{},
        none);
  check("k3-as-loss,is=differentiable,agg=token-sum",
        score_function<as_loss<k3>, weighting::differentiable>{}, none);
  check("k1-in-reward,is=differentiable,is-clip=1.05,agg=token-sum",
        score_function<in_reward<k1>, weighting::differentiable>{}, 1.05);
  check("k2-both,is=differentiable,is-clip=1.05,agg=token-sum",
        score_function<both<k2>, weighting::differentiable>{}, 1.05);
  check("k3~k2-as-loss,is=detached,is-clip=1.05,agg=token-sum",
        score_function<as_loss<k3, k2>, weighting::detached>{}, 1.05);
}

TEMPLATE_TEST_CASE("evaluate<Term>: a term type runs the kernel its spec names, bit for bit",
                   "[terms]", float, double) {
  // evaluate<as_loss<k3>>(s) with s's own term replaced against evaluate() of the spec that
  // names the term: the same kernel, so the outputs and the summary are identical. The
  // weighted specs take the multi-pass paths (adapt()), the plain ones the fused pass.
  using T = TestType;
  using A = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  A logp(2, 5), ref(2, 5), behavior(2, 5), mask(2, 5);
  logp << T(-1.2), T(-0.7), T(-2.1), T(-0.4), T(-3.0), T(-0.9), T(-1.5), T(-0.2), T(-2.2), T(-0.6);
  ref << T(-1.0), T(-0.9), T(-1.8), T(-0.5), T(-2.0), T(-1.1), T(-1.4), T(-0.3), T(-2.0), T(-0.8);
  behavior = logp + T(0.1);
  mask << 1, 1, 1, 0, 0, 1, 1, 1, 1, 1;
  const auto batch = padded(logp, ref, mask).with_behavior(behavior);
  auto check = [&](auto term, const char* named, const char* other) {
    using Term = decltype(term);
    A value(2, 5), coef(2, 5), want_value(2, 5), want_coef(2, 5);
    const summary got = evaluate<Term>(parse_spec(other), batch, value, coef);
    const summary want = evaluate(parse_spec(named), batch, want_value, want_coef);
    INFO(named << " as a type, given '" << other << "'");
    CHECK((value == want_value).all());
    CHECK((coef == want_coef).all());
    CHECK(got.loss == want.loss);
    CHECK(got.kl == want.kl);
    CHECK(got.tokens == want.tokens);
  };
  check(as_loss<k3>{}, "k3-as-loss", "k1-in-reward");
  check(in_reward<k1>{}, "k1-in-reward,beta=0.1", "k2-both,beta=0.1");
  check(both<k2>{}, "k2-both,agg=seq-mean-token-mean", "k3-as-loss,agg=seq-mean-token-mean");
  check(as_loss<k3, k2>{}, "k3~k2-as-loss,is=detached", "k1-both,is=detached");
  check(as_loss<k3>{}, "k3-as-loss,is=differentiable,is-level=prefix",
        "k2-both,is=differentiable,is-level=prefix");
  check(in_reward<k3>{}, "k3-in-reward,level=to-go,gamma=0.9", "k3-in-reward,level=to-go,gamma=0.9");
  check(as_loss<k1>{}, "k1-as-loss,level=sequence", "k3-both,level=sequence");
}

TEST_CASE("evaluate<Term>: the spec is checked again with the term's placement", "[terms]") {
  // level=to-go sums in-reward penalties: valid for k1-in-reward, not for an as-loss term.
  Eigen::ArrayXXd logp = Eigen::ArrayXXd::Constant(1, 3, -1.0), ref = logp - 0.2;
  Eigen::ArrayXXd value(1, 3), coef(1, 3);
  const spec s = parse_spec("k1-in-reward,level=to-go");
  CHECK_NOTHROW(evaluate<in_reward<k1>>(s, padded(logp, ref), value, coef));
  CHECK_THROWS_WITH(evaluate<as_loss<k3>>(s, padded(logp, ref), value, coef),
                    Catch::Contains("spec 'k3-as-loss,level=to-go") &&
                        Catch::Contains("level=to-go sums in-reward penalties"));
}
