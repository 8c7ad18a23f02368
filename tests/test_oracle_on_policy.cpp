// SPEC section 3 (on-policy, one state), proved through klgrad::evaluate against the exact
// oracle: on categorical policies (T = 1) against the state's divergence gradients, and on
// autoregressive ones (T = 2, 3) against the same per-state identities summed over pi's
// state distribution with states frozen (the token-level, "part 1" gradients).
#include "oracle_cases.hpp"

using namespace oracle_test;

namespace {

/// Checks that spec `text`'s on-policy expected gradient equals target(c) on every case
/// (for T = 1 the token targets are the state's divergence gradients: see
/// test_oracle_targets.cpp, "on one state the sequence and token targets coincide").
template <class Target>
void check_follows(const std::string& text, Target target) {
  for (const auto& c : cases()) {
    INFO(text << " on " << c.name());
    const vector g = expect(text, c).gradient;
    const vector want = target(c);
    CHECK(relative_error(g, want) < exact_tolerance);
  }
}

vector rkl_part1(const policy_case& c) { return rkl_token_gradient(c.pi, c.ref); }
vector fkl_part1(const policy_case& c) { return fkl_token_gradient(c.pi, c.ref); }

/// ref = pi with its logits moved by alpha * delta (delta fixed, N(0,1)).
tabular near(const tabular& pi, const matrix& delta, double alpha) {
  return tabular(pi.vocab, pi.steps, pi.logits + alpha * delta);
}

}  // namespace

TEST_CASE("table 3: k1-in-reward follows grad RKL", "[oracle][table3]") {
  check_follows("k1-in-reward", rkl_part1);
  for (const auto& c : categorical_cases())
    CHECK(relative_error(expect("k1-in-reward", c).gradient, rkl_gradient(c.pi, c.ref)) < exact_tolerance);
}

TEST_CASE("table 3: k2-as-loss follows grad RKL and equals k1-in-reward per sample",
          "[oracle][table3]") {
  check_follows("k2-as-loss", rkl_part1);
  for (const auto& c : categorical_cases())
    CHECK(relative_error(expect("k2-as-loss", c).gradient, rkl_gradient(c.pi, c.ref)) < exact_tolerance);
  for (const auto& c : cases()) {
    const sequences y = all_sequences(c.vocab, c.steps);
    const auto a = per_sample(klgrad::parse_spec("k2-as-loss"), c.pi, c.ref, nullptr, y);
    const auto b = per_sample(klgrad::parse_spec("k1-in-reward"), c.pi, c.ref, nullptr, y);
    CHECK((a.coefficient - b.coefficient).cwiseAbs().maxCoeff() == 0.0);
    CHECK((a.gradient - b.gradient).cwiseAbs().maxCoeff() == 0.0);
  }
}

TEST_CASE("table 3: k1-as-loss has zero expected gradient", "[oracle][table3][negative]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    const exact_expectation e = expect("k1-as-loss", c);
    CHECK(e.gradient.norm() < 1e-14);
    CHECK(e.trace_variance > 0.1);  // only noise
  }
}

TEST_CASE("table 3: k3-as-loss follows grad FKL, not grad RKL", "[oracle][table3][negative]") {
  check_follows("k3-as-loss", fkl_part1);
  for (const auto& c : cases()) {
    INFO(c.name());
    const vector g = expect("k3-as-loss", c).gradient;
    if (c.steps == 1) CHECK(relative_error(g, fkl_gradient(c.pi, c.ref)) < exact_tolerance);
    CHECK(relative_error(g, rkl_token_gradient(c.pi, c.ref)) > miss_tolerance);
    CHECK(relative_error(g, rkl_gradient(c.pi, c.ref)) > miss_tolerance);
  }
}

TEST_CASE("table 3: k3-as-loss's error against grad RKL grows with the distance to ref",
          "[oracle][table3][negative]") {
  std::mt19937_64 rng(99);
  for (const auto& c : cases()) {
    INFO(c.name());
    const matrix delta = tabular::random(c.vocab, c.steps, rng).logits;
    double previous = 0;
    for (double alpha : {0.01, 0.03, 0.1, 0.3, 1.0}) {
      INFO("alpha " << alpha);
      const tabular ref = near(c.pi, delta, alpha);
      const vector g = enumerate(klgrad::parse_spec("k3-as-loss"), c.pi, ref).gradient;
      const double error = relative_error(g, rkl_token_gradient(c.pi, ref));
      CHECK(error > previous);
      CHECK(error < 2 * alpha);  // first order in the distance: the errors vanish at ref
      previous = error;
    }
  }
}

TEST_CASE("table 3: k3-in-reward follows grad RKL - grad FKL, which nearly vanishes near ref",
          "[oracle][table3]") {
  check_follows("k3-in-reward", [](const policy_case& c) {
    return vector(rkl_token_gradient(c.pi, c.ref) - fkl_token_gradient(c.pi, c.ref));
  });
  std::mt19937_64 rng(5);
  for (const auto& c : cases()) {
    const matrix delta = tabular::random(c.vocab, c.steps, rng).logits;
    const tabular ref = near(c.pi, delta, 0.01);
    const vector g = enumerate(klgrad::parse_spec("k3-in-reward"), c.pi, ref).gradient;
    CHECK(g.norm() < 0.05 * rkl_token_gradient(c.pi, ref).norm());
  }
}

TEST_CASE("table 3: k2-in-reward follows grad E[k2] - grad RKL", "[oracle][table3]") {
  check_follows("k2-in-reward", [](const policy_case& c) {
    return vector(k2_token_gradient(c.pi, c.ref, state_distribution(c.pi)) -
                  rkl_token_gradient(c.pi, c.ref));
  });
}

TEST_CASE("table 3: k1-both and k3-both follow grad RKL, k3-both's coefficient is s",
          "[oracle][table3]") {
  check_follows("k1-both", rkl_part1);
  check_follows("k3-both", rkl_part1);
  for (const auto& c : cases()) {
    const sequences y = all_sequences(c.vocab, c.steps);
    const auto r = per_sample(klgrad::parse_spec("k3-both"), c.pi, c.ref, nullptr, y);
    const matrix s = token_log_probs(c.pi, c.pi.log_probs(), y) - token_log_probs(c.ref, c.ref.log_probs(), y);
    CHECK((r.coefficient - s).cwiseAbs().maxCoeff() < 1e-14);
  }
}

TEST_CASE("table 3: aggregation and beta only rescale the expected gradient", "[oracle][table3]") {
  // per_sample_spec drops them: this checks that the library's scaled coefficients are the
  // per-sample ones times beta * a (token-mean over the enumerated batch: a = 1 / (B T)).
  for (const auto& c : cases()) {
    const sequences y = all_sequences(c.vocab, c.steps);
    const matrix lp = token_log_probs(c.pi, c.pi.log_probs(), y);
    const matrix lr = token_log_probs(c.ref, c.ref.log_probs(), y);
    matrix v1(y.rows(), y.cols()), c1(y.rows(), y.cols()), v2 = v1, c2 = c1;
    klgrad::evaluate(klgrad::parse_spec("k3-as-loss,beta=0.04"), klgrad::padded(lp, lr), v1, c1);
    klgrad::evaluate(klgrad::parse_spec("k3-as-loss,agg=token-sum"), klgrad::padded(lp, lr), v2, c2);
    CHECK((c1 - c2 * (0.04 / double(y.size()))).cwiseAbs().maxCoeff() < 1e-16);
  }
}
