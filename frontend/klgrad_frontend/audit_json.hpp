// Running `klgrad audit` on a parsed policy file: the exact expected gradient of a spec,
// by enumeration through klgrad::evaluate, against the divergences' exact gradients; shared
// with the policy file's fuzz target.
#pragma once

#include "errors.hpp"
#include "json_input.hpp"
#include "policy_file.hpp"

#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/monte_carlo.hpp>
#include <klgrad/oracle/targets.hpp>
#include <klgrad/spec.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace klgrad::frontend {
namespace audit_input {

using oracle::vector;

/// Above this many outcomes (V^T) the enumeration is refused: it would take too long.
constexpr Index max_outcomes = 1 << 20;

/// The command-line settings of `klgrad audit`.
struct settings {
  std::string policy, spec, sampling = "policy", format = "json";
  Index mc = 0;
  std::uint64_t seed = 0;
  std::uint64_t max_memory = std::uint64_t(oracle::default_max_bytes);  ///< --max-memory
  std::string memory_option = "--max-memory";  ///< how the caller names max_memory
};

inline nlohmann::ordered_json to_json(const vector& x) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (Index i = 0; i < x.size(); ++i) out.push_back(x(i));
  return out;
}

/// The refusal of work needing `need` bytes, over --max-memory.
inline limit_error over_memory(const std::string& what, double need, const settings& cfg) {
  return limit_error(what + " needs " + oracle::byte_text(need) + ", over " + cfg.memory_option +
                     " " + oracle::byte_text(double(cfg.max_memory)) + "; raise " +
                     cfg.memory_option + " or use a smaller policy");
}

/// Runs f, turning the oracle's too_large error into the CLI's words.
template <class F>
auto within_memory(F&& f, const std::string& what, const settings& cfg) -> decltype(f()) {
  try {
    return f();
  } catch (const input_error& e) {
    if (e.reason != input_reason::too_large) throw;
    throw over_memory(what, e.value, cfg);
  }
}

/// The audit report of spec s on the policy file `in` (cfg: sampling, mc, seed, max_memory;
/// cfg.spec is not read); keys keep the documented order. schema_error names a bad key of
/// `in`; limit_error refuses a policy too large for the enumeration or for cfg.max_memory.
inline nlohmann::ordered_json audit(const spec& s, const nlohmann::json& in,
                                    const settings& cfg) {
  if (!in.is_object())
    throw schema_error("the policy file must hold a JSON object, got " + shown(in));
  require_known_keys(in, {"vocab", "steps", "logits", "ref_logits", "behavior_logits"},
                     "the policy file");
  const Index v = positive_integer(in, "vocab", 2), t = positive_integer(in, "steps", 1);
  Index outcomes = 1;
  for (Index i = 0; i < t; ++i)
    if ((outcomes *= v) > max_outcomes)
      throw limit_error("vocab^steps exceeds " + std::to_string(max_outcomes) +
                        " outcomes; the audit enumerates every one");
  // Checked before reading the logits: the enumeration holds a gradient per outcome.
  const std::string enumeration = "vocab " + std::to_string(v) + ", steps " + std::to_string(t) +
                                  ": enumerating its " + std::to_string(outcomes) + " outcomes";
  const double need = oracle::enumeration_bytes(v, t);
  if (need > double(cfg.max_memory)) throw over_memory(enumeration, need, cfg);
  const tabular pi = read_logits(in, "logits", v, t), ref = read_logits(in, "ref_logits", v, t);
  const bool from_mu = cfg.sampling == "behavior";
  std::unique_ptr<tabular> mu;
  if (from_mu) mu = std::make_unique<tabular>(read_logits(in, "behavior_logits", v, t));

  const double limit = double(cfg.max_memory);
  const oracle::exact_expectation e = within_memory(
      [&] { return oracle::enumerate(s, pi, ref, mu.get(), limit); }, enumeration, cfg);
  const oracle::targets tg = oracle::exact_targets(pi, ref);
  const std::pair<const char*, const vector*> named[] = {{"rkl", &tg.rkl_gradient},
                                                         {"rkl_token", &tg.rkl_token_gradient},
                                                         {"fkl", &tg.fkl_gradient},
                                                         {"fkl_token", &tg.fkl_token_gradient}};
  nlohmann::ordered_json out;
  out["spec"] = to_string(s);
  out["sampling"] = cfg.sampling;
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
  if (cfg.mc > 0) {
    const oracle::mc_estimate m = within_memory(
        [&] { return oracle::monte_carlo(s, pi, ref, mu.get(), cfg.mc, cfg.seed, 4096, limit); },
        "--mc " + std::to_string(cfg.mc), cfg);
    out["mc"] = nlohmann::ordered_json{{"samples", m.samples},
                 {"seed", cfg.seed},
                 {"gradient", to_json(m.gradient)},
                 {"standard_error", to_json(m.standard_error)}};
  }
  return out;
}

}  // namespace audit_input
}  // namespace klgrad::frontend
