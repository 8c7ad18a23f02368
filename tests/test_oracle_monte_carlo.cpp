// Tests of oracle/monte_carlo.hpp: Monte Carlo estimates through klgrad::evaluate agree
// with the exact enumerated expectations within 5 standard errors, per coordinate.
#include "oracle_cases.hpp"

using namespace oracle_test;

namespace {

void check_mc(const std::string& text, const policy_case& c, bool from_mu, Index n, std::uint64_t seed) {
  INFO(text << (from_mu ? " from mu" : " on-policy") << " on " << c.name());
  const klgrad::spec s = klgrad::parse_spec(text);
  const tabular* mu = from_mu ? &c.mu : nullptr;
  const exact_expectation e = enumerate(s, c.pi, c.ref, mu);
  const mc_estimate m = monte_carlo(s, c.pi, c.ref, mu, n, seed);
  CHECK(m.samples == n);
  for (Index i = 0; i < e.gradient.size(); ++i) {
    INFO("coordinate " << i << ": exact " << e.gradient(i) << ", MC " << m.gradient(i) << " +- "
                       << m.standard_error(i));
    CHECK(std::abs(m.gradient(i) - e.gradient(i)) <= 5 * m.standard_error(i) + 1e-12);
  }
  CHECK(std::abs(m.value - e.value) <= 5 * m.value_standard_error + 1e-12);
  // The sum of the per-coordinate sample variances estimates the trace variance (a loose
  // sanity check: a variance estimate of heavy-tailed coefficients such as 1 - rho is noisy).
  const double trace = m.standard_error.squaredNorm() * double(n);
  CHECK(trace == Approx(e.trace_variance).epsilon(0.3));
}

}  // namespace

TEST_CASE("monte carlo: estimates agree with the exact expectation within 5 standard errors",
          "[oracle][monte-carlo]") {
  std::uint64_t seed = 1;
  for (const auto& c : cases()) {
    for (const char* text : {"k1-in-reward", "k3-as-loss", "k1-in-reward,level=to-go", "k2-as-loss,level=sequence"})
      check_mc(text, c, false, 20000, seed++);
    for (const char* text : {"k2-as-loss,is=detached", "k3-as-loss,is=differentiable", "k3-as-loss"})
      check_mc(text, c, true, 20000, seed++);
  }
}

TEST_CASE("monte carlo: the sampler is seeded and draws from the policy", "[oracle][monte-carlo]") {
  const auto c = cases()[4];  // V = 3, T = 2
  sampler a(42), b(42);
  CHECK(a.draw(c.pi, 100) == b.draw(c.pi, 100));
  // Empirical frequencies of the 9 outcomes against their probabilities.
  sampler draw(7);
  const Index n = 50000;
  const sequences y = draw.draw(c.pi, n);
  vector counts = vector::Zero(9);
  for (Index b2 = 0; b2 < n; ++b2) counts(y(b2, 0) * 3 + y(b2, 1)) += 1;
  const matrix lp = token_log_probs(c.pi, c.pi.log_probs(), all_sequences(3, 2));
  for (Index o = 0; o < 9; ++o) {
    const double p = std::exp(lp.row(o).sum());
    CHECK(std::abs(counts(o) / double(n) - p) <= 5 * std::sqrt(p * (1 - p) / double(n)));
  }
}
