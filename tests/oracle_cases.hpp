// Shared fixtures of the oracle tests: random categorical and tabular policies of a few
// sizes with fixed seeds, and the expectation of a spec through klgrad::evaluate.
#pragma once

#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/finite_difference.hpp>
#include <klgrad/oracle/monte_carlo.hpp>
#include <klgrad/oracle/targets.hpp>
#include <klgrad/spec/spec.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

namespace oracle_test {

using namespace klgrad::oracle;

/// A policy pi, a reference and a behaviour policy of one size.
struct policy_case {
  Index vocab, steps;
  tabular pi, ref, mu;
  std::string name() const {
    return "V=" + std::to_string(vocab) + " T=" + std::to_string(steps);
  }
};

/// Categorical (T = 1) and autoregressive (T = 2, 3) policies, V = 2..4, logits ~ N(0, 1).
inline std::vector<policy_case> cases(unsigned seed = 20240601) {
  std::mt19937_64 rng(seed);
  std::vector<policy_case> out;
  const Index sizes[][2] = {{2, 1}, {3, 1}, {4, 1}, {2, 2}, {3, 2}, {4, 2}, {2, 3}, {3, 3}};
  for (const auto& s : sizes) {
    auto pi = tabular::random(s[0], s[1], rng), ref = tabular::random(s[0], s[1], rng),
         mu = tabular::random(s[0], s[1], rng);
    out.push_back({s[0], s[1], pi, ref, mu});
  }
  return out;
}

inline std::vector<policy_case> categorical_cases() {
  std::vector<policy_case> out;
  for (auto& c : cases())
    if (c.steps == 1) out.push_back(c);
  return out;
}

inline std::vector<policy_case> sequence_cases() {
  std::vector<policy_case> out;
  for (auto& c : cases())
    if (c.steps >= 2) out.push_back(c);
  return out;
}

/// Exact expectation of spec `text` on pi (on-policy) or from mu.
inline exact_expectation expect(const std::string& text, const policy_case& c, bool from_mu = false) {
  return enumerate(klgrad::parse_spec(text), c.pi, c.ref, from_mu ? &c.mu : nullptr);
}

/// grad of sum_h d(h) E_{pi_h}[k2(s)] with states frozen.
inline vector k2_token_gradient(const tabular& pi, const tabular& ref, const vector& d) {
  return token_gradient(pi, ref, d, [](const vector& lp, const vector& lr) {
    return expectation_gradient(lp, lr, [](double s) { return 0.5 * s * s; },
                                [](double s) { return s; });
  });
}

/// The four targets of `klgrad audit`, by name.
inline std::vector<std::pair<std::string, vector>> audit_targets(const policy_case& c) {
  const targets t = exact_targets(c.pi, c.ref);
  return {{"rkl", t.rkl_gradient},
          {"rkl_token", t.rkl_token_gradient},
          {"fkl", t.fkl_gradient},
          {"fkl_token", t.fkl_token_gradient}};
}

inline constexpr double exact_tolerance = 1e-10;
/// A gradient "follows no target" when it misses every one by more than this.
inline constexpr double miss_tolerance = 1e-3;

}  // namespace oracle_test
