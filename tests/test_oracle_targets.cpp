// Tests of oracle/targets.hpp and oracle/finite_difference.hpp: every exact target gradient
// against finite differences of its exact objective, and the oracle's bookkeeping.
#include "oracle_cases.hpp"

using namespace oracle_test;

namespace {
constexpr double fd_tolerance = 1e-8;
}

TEST_CASE("oracle: sequence RKL gradient matches finite differences", "[oracle][targets]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    const auto f = of_parameters(c.vocab, c.steps, [&](const tabular& p) { return rkl_value(p, c.ref); });
    CHECK(relative_error(finite_difference_gradient(f, c.pi.parameter_vector()),
                         rkl_gradient(c.pi, c.ref)) < fd_tolerance);
  }
}

TEST_CASE("oracle: sequence FKL gradient matches finite differences", "[oracle][targets]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    const auto f = of_parameters(c.vocab, c.steps, [&](const tabular& p) { return fkl_value(p, c.ref); });
    CHECK(relative_error(finite_difference_gradient(f, c.pi.parameter_vector()),
                         fkl_gradient(c.pi, c.ref)) < fd_tolerance);
  }
}

TEST_CASE("oracle: per-state (token) gradients match finite differences with states frozen",
          "[oracle][targets]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    for (const vector& d : {state_distribution(c.pi), state_distribution(c.mu)}) {
      const auto rk = of_parameters(c.vocab, c.steps, [&](const tabular& p) { return rkl_token_value(p, c.ref, d); });
      const auto fk = of_parameters(c.vocab, c.steps, [&](const tabular& p) { return fkl_token_value(p, c.ref, d); });
      const auto k2 = of_parameters(c.vocab, c.steps, [&](const tabular& p) {
        const matrix lp = p.log_probs(), lr = c.ref.log_probs();
        double v = 0;
        for (Index r = 0; r < p.rows(); ++r)
          v += d(r) * expectation(lp.row(r).transpose(), lr.row(r).transpose(),
                                  [](double s) { return 0.5 * s * s; });
        return v;
      });
      const vector x = c.pi.parameter_vector();
      CHECK(relative_error(finite_difference_gradient(rk, x), rkl_token_gradient(c.pi, c.ref, d)) < fd_tolerance);
      CHECK(relative_error(finite_difference_gradient(fk, x), fkl_token_gradient(c.pi, c.ref, d)) < fd_tolerance);
      CHECK(relative_error(finite_difference_gradient(k2, x), k2_token_gradient(c.pi, c.ref, d)) < fd_tolerance);
    }
  }
}

TEST_CASE("oracle: on one state the sequence and token targets coincide", "[oracle][targets]") {
  for (const auto& c : categorical_cases()) {
    INFO(c.name());
    const targets t = exact_targets(c.pi, c.ref);
    CHECK(relative_error(t.rkl_token_gradient, t.rkl_gradient) < 1e-14);
    CHECK(relative_error(t.fkl_token_gradient, t.fkl_gradient) < 1e-14);
  }
}

TEST_CASE("oracle: sequence values equal the enumerated sums", "[oracle][targets]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    const sequences y = all_sequences(c.vocab, c.steps);
    const matrix lp = token_log_probs(c.pi, c.pi.log_probs(), y);
    const matrix lr = token_log_probs(c.ref, c.ref.log_probs(), y);
    const vector p = lp.rowwise().sum().array().exp().matrix(), q = lr.rowwise().sum().array().exp().matrix();
    CHECK(p.sum() == Approx(1.0).epsilon(1e-14));
    const vector S = (lp - lr).rowwise().sum();
    CHECK(rkl_value(c.pi, c.ref) == Approx(p.dot(S)).epsilon(1e-13));
    CHECK(fkl_value(c.pi, c.ref) == Approx(-q.dot(S)).epsilon(1e-13));
    // Unbiased value estimators: E_pi[sum_t k(s_t)] = KL_seq for k1 and k3.
    CHECK(expect("k1-in-reward", c).value == Approx(rkl_value(c.pi, c.ref)).epsilon(1e-12));
    CHECK(expect("k3-as-loss", c).value == Approx(rkl_value(c.pi, c.ref)).epsilon(1e-12));
  }
}

TEST_CASE("oracle: parameter order is step by step, prefixes lexicographic", "[oracle][targets]") {
  const tabular p = tabular::random(3, 3, *std::make_unique<std::mt19937_64>(7));
  CHECK(p.rows() == 1 + 3 + 9);
  CHECK(p.parameters() == 39);
  CHECK(p.row(0, 0) == 0);
  CHECK(p.row(1, 2) == 3);
  CHECK(p.row(2, 0) == 4);
  CHECK(p.row(2, 8) == 12);
  const sequences y = all_sequences(3, 3);
  CHECK(y(5, 0) == 0);
  CHECK(y(5, 1) == 1);
  CHECK(y(5, 2) == 2);
  CHECK(token_row(p, y, 5, 2) == p.row(2, 1));
  const vector theta = p.parameter_vector();
  CHECK(theta(3 * 3 + 1) == p.logits(3, 1));
  CHECK(tabular::from_parameters(3, 3, theta).logits == p.logits);
}

TEST_CASE("oracle: malformed policies are rejected", "[oracle][targets]") {
  CHECK_THROWS_AS(tabular(3, 2, matrix::Zero(3, 3)), klgrad::shape_error);
  CHECK_THROWS_AS(tabular(1, 2, matrix::Zero(2, 1)), klgrad::input_error);
  matrix z = matrix::Zero(4, 3);
  z(2, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(tabular(3, 2, z), klgrad::input_error);
}
