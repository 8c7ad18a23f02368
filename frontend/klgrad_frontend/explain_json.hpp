// The JSON of a spec's verdict (klgrad::explain), as `klgrad explain` prints it and
// klgrad.explain() returns it: one builder for both.
#pragma once

#include <klgrad/explain.hpp>

#include <nlohmann/json.hpp>

#include <string>

namespace klgrad::frontend {

inline nlohmann::ordered_json to_json(const follows& f, bool one_state) {
  nlohmann::ordered_json out;
  out["follows"] = f.name;
  out["kind"] = f.kind == follows::exact    ? "exact"
                : f.kind == follows::zero   ? "zero"
                : f.kind == follows::biased ? "biased"
                                            : "unknown";
  nlohmann::ordered_json terms = nlohmann::ordered_json::array();
  for (const auto& t : f.terms)
    terms.push_back({{"gradient", std::string(to_string(t.what, one_state))},
                     {"weight", t.weight},
                     {"states", one_state || !per_state(t.what) ? "-" : (f.behavior_states ? "mu" : "pi")}});
  out["terms"] = terms;
  out["sentence"] = f.sentence;
  return out;
}

inline nlohmann::ordered_json to_json(const verdict& v) {
  nlohmann::ordered_json out;
  out["spec"] = v.spec;
  out["sentence"] = v.sentence;
  out["on_policy"] = {{"token", to_json(v.on_policy_token, true)},
                      {"sequence", to_json(v.on_policy_sequence, false)}};
  out["off_policy"] = {{"token", to_json(v.off_policy_token, true)},
                       {"sequence", to_json(v.off_policy_sequence, false)}};
  return out;
}

}  // namespace klgrad::frontend
