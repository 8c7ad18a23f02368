// A user-defined estimator end to end (examples/neyman_chi2.hpp, Neyman's chi-square, which
// klgrad does not ship): its derivative against central differences, typed evaluate() through
// levels, weights, clamps and aggregations, and the exact oracle (enumerate<E>), whose
// expected gradient is checked against finite differences of the closed-form divergence
// and of the oracle's own exact expected value.
#include "../examples/neyman_chi2.hpp"
#include "oracle_cases.hpp"
#include "spec_strings.hpp"

#include <klgrad/klgrad.hpp>

#include <cmath>
#include <limits>

using namespace oracle_test;
using klgrad::Index;

namespace {

/// chi2(ref || pi) = sum_y ref_y^2 / pi_y - 1 of a categorical (T = 1) policy.
double neyman_value(const tabular& pi, const tabular& ref) {
  const vector p = pi.log_probs().row(0).array().exp().transpose();
  const vector r = ref.log_probs().row(0).array().exp().transpose();
  return (r.array().square() / p.array()).sum() - 1.0;
}

}  // namespace

TEMPLATE_TEST_CASE("user estimator: k'(s) matches a central difference, k(0) = k'(0) = 0",
                   "[user-estimator]", float, double) {
  using T = TestType;
  const T h = std::cbrt(std::numeric_limits<T>::epsilon());
  const T tol = std::is_same_v<T, float> ? T(2e-2) : T(1e-8);
  CHECK(neyman_chi2::value(T(0)) == T(0));
  CHECK(neyman_chi2::derivative(T(0)) == T(0));
  for (T s : {T(-3), T(-1), T(-0.3), T(0.2), T(0.7), T(2.5)}) {
    const T fd = (neyman_chi2::value(T(s + h)) - neyman_chi2::value(T(s - h))) / (T(2) * h);
    const T d = neyman_chi2::derivative(s);
    INFO("s = " << s);
    CHECK(std::abs(fd - d) <= tol * std::max(T(1), std::abs(d)));
  }
}

TEMPLATE_TEST_CASE("user estimator: typed evaluate's coef is the term's coefficient, and the "
                   "shipped estimators give the runtime path's results bit for bit",
                   "[user-estimator]", float, double) {
  using T = TestType;
  using A = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  A logp(2, 5), ref(2, 5), mask(2, 5), value(2, 5), coef(2, 5);
  logp << -1.2f, -0.7f, -2.1f, -0.4f, -3.0f, -0.9f, -1.5f, -0.2f, -1.1f, -2.2f;
  ref << -1.0f, -0.9f, -1.8f, -0.5f, -2.0f, -1.1f, -1.4f, -0.3f, -1.6f, -2.0f;
  mask << 1, 1, 1, 1, 0, 1, 1, 0, 1, 1;
  const T eps = std::numeric_limits<T>::epsilon();
  // the kernel's packet forms (pexp) against the scalar forms (expm1)
  auto close = [&](T got, T want) { return std::abs(got - want) <= 16 * eps * std::abs(want); };
  for (const char* text : {"k1-in-reward,agg=token-sum", "k1-as-loss,agg=token-sum",
                           "k1-both,agg=token-sum"}) {
    const auto s = klgrad::parse_spec(text);
    klgrad::evaluate<neyman_chi2>(s, klgrad::padded(logp, ref, mask), value, coef);
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 5; ++t) {
        const T x = logp(b, t) - ref(b, t);
        const bool valid = mask(b, t) != 0;
        const T c = s.term.where == klgrad::placement::in_reward
                        ? klgrad::in_reward<neyman_chi2>::coefficient(x)
                        : s.term.where == klgrad::placement::as_loss
                              ? klgrad::as_loss<neyman_chi2>::coefficient(x)
                              : klgrad::both<neyman_chi2>::coefficient(x);
        INFO(text << " at (" << b << ", " << t << ")");
        CHECK(close(value(b, t), valid ? neyman_chi2::value(x) : T(0)));
        CHECK(close(coef(b, t), valid ? c : T(0)));
      }
  }
  // The typed entry is the runtime path's kernel: k3 named by type or by the spec.
  A value2(2, 5), coef2(2, 5);
  for (const std::string& text : klgrad::test::all_spec_strings()) {
    if (text.rfind("k3-", 0) != 0) continue;
    const auto s = klgrad::parse_spec(text);
    const auto batch = klgrad::padded(logp, ref, mask).with_behavior(ref);
    const auto typed = klgrad::evaluate<klgrad::k3>(s, batch, value, coef);
    const auto runtime = klgrad::evaluate(s, batch, value2, coef2);
    INFO(text);
    CHECK((value == value2).all());
    CHECK((coef == coef2).all());
    CHECK(typed.loss == runtime.loss);
  }
}

TEST_CASE("user estimator: every level, weight, clamp and aggregation runs, finite, and the "
          "as-loss coef is d loss / d logp by central differences",
          "[user-estimator]") {
  using A = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  A logp(2, 4), ref(2, 4), behavior(2, 4), mask(2, 4), value(2, 4), coef(2, 4);
  logp << -1.2, -0.7, -2.1, -0.4, -0.9, -1.5, -0.2, -1.1;
  ref << -1.0, -0.9, -1.8, -0.5, -1.1, -1.4, -0.3, -1.6;
  behavior << -1.1, -0.8, -2.0, -0.6, -1.0, -1.3, -0.4, -1.2;
  mask << 1, 1, 1, 0, 1, 1, 1, 1;
  Index specs = 0;
  // the sweep's specs with one estimator (k1: the spec's estimator names are not used)
  for (const std::string& text : klgrad::test::all_spec_strings()) {
    if (text.rfind("k1-", 0) != 0) continue;
    const auto s = klgrad::parse_spec(text);
    INFO(text);
    const auto r = klgrad::evaluate<neyman_chi2>(
        s, klgrad::padded(logp, ref, mask).with_behavior(behavior), value, coef);
    CHECK(value.isFinite().all());
    CHECK(coef.isFinite().all());
    CHECK(std::isfinite(r.loss));
    ++specs;
  }
  CHECK(specs > 100);
  // An as-loss term without weights at token level: loss = beta sum a_{b,t} k(s_{b,t}), so
  // coef = d loss / d logp.
  for (const char* text : {"k1-as-loss,agg=seq-mean-token-mean,beta=0.3",
                           "k1-as-loss,agg=token-mean,clamp=log-ratio:-0.25:0.45"}) {
    const auto s = klgrad::parse_spec(text);
    klgrad::evaluate<neyman_chi2>(s, klgrad::padded(logp, ref, mask), value, coef);
    const double h = 1e-6;
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 4; ++t) {
        auto loss_at = [&](double step) {
          A lp = logp;
          lp(b, t) += step;
          A v(2, 4), c(2, 4);
          return klgrad::evaluate<neyman_chi2>(s, klgrad::padded(lp, ref, mask), v, c).loss;
        };
        const double fd = (loss_at(h) - loss_at(-h)) / (2 * h);
        INFO(text << " at (" << b << ", " << t << ")");
        CHECK(std::abs(fd - coef(b, t)) <= 1e-8 * std::max(1.0, std::abs(coef(b, t))));
      }
  }
}

TEST_CASE("user estimator: the exact oracle shows k-both follows grad chi2(ref || pi) and "
          "as-loss alone does not", "[user-estimator][oracle]") {
  for (const auto& c : categorical_cases()) {
    INFO(c.name());
    const auto both = enumerate<neyman_chi2>(klgrad::parse_spec("k1-both"), c.pi, c.ref);
    const auto loss = enumerate<neyman_chi2>(klgrad::parse_spec("k1-as-loss"), c.pi, c.ref);
    // E_pi[k(s)] is the divergence (the estimator is unbiased on-policy) ...
    CHECK(std::abs(both.value - neyman_value(c.pi, c.ref)) <=
          1e-12 * std::max(1.0, neyman_value(c.pi, c.ref)));
    // ... k * score + k' is its exact gradient (finite differences of the closed form) ...
    const vector target = finite_difference_gradient(
        of_parameters(c.vocab, c.steps, [&](const tabular& p) { return neyman_value(p, c.ref); }),
        c.pi.parameter_vector());
    CHECK(relative_error(both.gradient, target) < 1e-9);
    // ... and k' alone misses it.
    CHECK(relative_error(loss.gradient, target) > miss_tolerance);
  }
  // Sequences: the penalty as a reward-to-go plus the loss at each token follow
  // grad E_pi[sum_t k(s_t)], here differentiated by finite differences of the oracle's own
  // exact expected value (a spec places a term once, so the two parts are two specs).
  for (const auto& c : sequence_cases()) {
    INFO(c.name());
    const auto reward = klgrad::parse_spec("k1-in-reward,level=to-go");
    const auto loss = klgrad::parse_spec("k1-as-loss");
    const vector target = finite_difference_gradient(
        of_parameters(c.vocab, c.steps,
                      [&](const tabular& p) { return enumerate<neyman_chi2>(loss, p, c.ref).value; }),
        c.pi.parameter_vector());
    const vector sum = enumerate<neyman_chi2>(reward, c.pi, c.ref).gradient +
                       enumerate<neyman_chi2>(loss, c.pi, c.ref).gradient;
    CHECK(relative_error(sum, target) < 1e-9);
    CHECK(relative_error(enumerate<neyman_chi2>(loss, c.pi, c.ref).gradient, target) >
          miss_tolerance);
  }
}

namespace {

/// 2 k3, a user estimator with a closed form on explain's basis: explain's verdicts must
/// scale by 2, and the exact oracle must agree.
struct twice_k3 : klgrad::estimator_base<twice_k3> {
  static constexpr bool derivative_zero_at_zero = true;
  static constexpr klgrad::closed_form value_form{-2, 2, 2, 0, 0, 0};
  static constexpr klgrad::closed_form derivative_form{2, 0, -2, 0, 0, 0};
  template <class T> static klgrad::scalar_only<T> value(T s) { return T(2) * klgrad::k3::value(s); }
  template <class T> static klgrad::scalar_only<T> derivative(T s) {
    return T(2) * klgrad::k3::derivative(s);
  }
  using estimator_base<twice_k3>::value;
  using estimator_base<twice_k3>::derivative;
  template <class P> static P packet_value(const P& s) {
    return Eigen::internal::padd(klgrad::k3::packet_value(s), klgrad::k3::packet_value(s));
  }
  template <class P> static P packet_derivative(const P& s) {
    return Eigen::internal::padd(klgrad::k3::packet_derivative(s),
                                 klgrad::k3::packet_derivative(s));
  }
  template <class T> static T lowest_safe() { return klgrad::k3::lowest_safe<T>(); }
  template <class T> static T highest_safe() { return klgrad::k3::highest_safe<T>(); }
};

}  // namespace

TEST_CASE("user estimator: explain reads the closed form, and its verdict is the exact "
          "oracle's", "[user-estimator][explain][oracle]") {
  static_assert(klgrad::has_closed_form<twice_k3>::value);
  static_assert(!klgrad::has_closed_form<neyman_chi2>::value);
  const auto as_loss = klgrad::parse_spec("k3-as-loss");
  const auto v = klgrad::explain<twice_k3>(as_loss);
  CHECK(v.on_policy_token.name == "2 fkl");
  CHECK(v.on_policy_sequence.name == "2 fkl_token");
  // The oracle: E_pi[2 k3'(s) g] is twice grad KL(ref || pi) on one state, twice the
  // per-state one over sequences.
  for (const auto& c : categorical_cases()) {
    INFO(c.name());
    const auto t = exact_targets(c.pi, c.ref);
    CHECK(relative_error(enumerate<twice_k3>(as_loss, c.pi, c.ref).gradient,
                         vector(2 * t.fkl_gradient)) < 1e-10);
  }
  for (const auto& c : sequence_cases()) {
    INFO(c.name());
    const auto t = exact_targets(c.pi, c.ref);
    CHECK(relative_error(enumerate<twice_k3>(as_loss, c.pi, c.ref).gradient,
                         vector(2 * t.fkl_token_gradient)) < 1e-10);
  }
}

TEST_CASE("user estimator: without a closed form explain says unknown in every cell",
          "[user-estimator][explain]") {
  const auto v = klgrad::explain<neyman_chi2>(klgrad::parse_spec("k1-both"));
  for (const auto* f : {&v.on_policy_token, &v.on_policy_sequence, &v.off_policy_token,
                        &v.off_policy_sequence}) {
    CHECK(f->kind == klgrad::follows::unknown);
    CHECK(f->name == "unknown");
  }
  CHECK(v.sentence.find("is unknown to explain") != std::string::npos);
}
