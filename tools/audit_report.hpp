// The report of `klgrad audit` (the exact expected gradient of a spec on a small tabular
// policy against the divergences' exact gradients), as the CLI prints it and klgrad.audit()
// returns it: one builder for both.
#pragma once

#include "commands.hpp"
#include "policy_file.hpp"

#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/monte_carlo.hpp>
#include <klgrad/oracle/targets.hpp>
#include <klgrad/spec.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace klgrad::cli {

/// Above this many outcomes (V^T) the enumeration is refused: it would take too long.
inline constexpr Index max_outcomes = 1 << 20;

inline nlohmann::ordered_json to_json(const oracle::vector& x) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (Index i = 0; i < x.size(); ++i) out.push_back(x(i));
  return out;
}

/// The audit report of spec s on the policy file's JSON `in`, sequences drawn from the policy
/// or (sampling "behavior") from its behavior_logits, with an mc-sample Monte Carlo estimate
/// when mc > 0; keys keep the documented order. usage_error names a bad key of `in`.
inline nlohmann::ordered_json audit_report(const spec& s, const nlohmann::json& in,
                                           const std::string& sampling, Index mc,
                                           std::uint64_t seed) {
  using oracle::vector;
  if (!in.is_object()) throw usage_error("the policy file must hold a JSON object");
  const Index v = positive_integer(in, "vocab", 2), t = positive_integer(in, "steps", 1);
  Index outcomes = 1;
  for (Index i = 0; i < t; ++i)
    if ((outcomes *= v) > max_outcomes)
      throw usage_error("vocab^steps exceeds " + std::to_string(max_outcomes) +
                        " outcomes; the audit enumerates every one");
  const tabular pi = read_logits(in, "logits", v, t), ref = read_logits(in, "ref_logits", v, t);
  const bool from_mu = sampling == "behavior";
  std::unique_ptr<tabular> mu;
  if (from_mu) mu = std::make_unique<tabular>(read_logits(in, "behavior_logits", v, t));

  const oracle::exact_expectation e = oracle::enumerate(s, pi, ref, mu.get());
  const oracle::targets tg = oracle::exact_targets(pi, ref);
  const std::pair<const char*, const vector*> named[] = {{"rkl", &tg.rkl_gradient},
                                                         {"rkl_token", &tg.rkl_token_gradient},
                                                         {"fkl", &tg.fkl_gradient},
                                                         {"fkl_token", &tg.fkl_token_gradient}};
  nlohmann::ordered_json out;
  out["spec"] = to_string(s);
  out["sampling"] = sampling;
  out["parameters"] = pi.parameters();
  out["expected_value"] = e.value;
  out["expected_gradient"] = to_json(e.gradient);
  out["gradient_trace_variance"] = e.trace_variance;
  out["targets"] = nlohmann::ordered_json{{"rkl", {{"value", tg.rkl}, {"gradient", to_json(tg.rkl_gradient)}}},
                    {"rkl_token", {{"gradient", to_json(tg.rkl_token_gradient)}}},
                    {"fkl", {{"value", tg.fkl}, {"gradient", to_json(tg.fkl_gradient)}}},
                    {"fkl_token", {{"gradient", to_json(tg.fkl_token_gradient)}}}};
  std::string follows = "none";
  for (const auto& [name, target] : named) {
    const double r = oracle::relative_error(e.gradient, *target);
    out["relative_error"][name] = r;
    if (follows == "none" && r <= 1e-9) follows = name;
  }
  out["follows"] = follows;
  if (mc > 0) {
    const oracle::mc_estimate m = oracle::monte_carlo(s, pi, ref, mu.get(), mc, seed);
    out["mc"] = nlohmann::ordered_json{{"samples", m.samples},
                 {"seed", seed},
                 {"gradient", to_json(m.gradient)},
                 {"standard_error", to_json(m.standard_error)}};
  }
  return out;
}

}  // namespace klgrad::cli
