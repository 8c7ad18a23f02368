// What `klgrad bench` and klgrad.bench share: the measurement of one named kernel (a spec, or
// a full-vocabulary divergence) through klgrad::bench, and its result as JSON. Each front end
// checks its own arguments in its own words (options, keyword arguments) before calling here.
#pragma once

#include "errors.hpp"

#include <klgrad/bench.hpp>
#include <klgrad/spec.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <optional>
#include <string>

namespace klgrad::frontend::bench_json {

/// What a row measures: a spec's sampled-token kernel, or a divergence over full logits.
enum class kind { spec, logits };

/// The format called `name` ("float", "double", "bf16", "fp16"), or nothing.
inline std::optional<bench::number_format> format_named(const std::string& name) {
  return klgrad::detail::value_in(bench::number_format_names, name);
}

/// The divergence called `name` (reverse-kl, forward-kl, jensen-shannon), or nothing.
inline std::optional<divergence> divergence_named(const std::string& name) {
  return klgrad::detail::value_in(divergence_names, name);
}

/// "reverse-kl, forward-kl, jensen-shannon": the divergences a row can measure.
inline std::string divergence_list() {
  std::string out;
  for (divergence d : all_divergences) out += (out.empty() ? "" : ", ") + std::string(to_string(d));
  return out;
}

/// Measures the kernel `name` of kind k: a spec text (refused as the library's spec_error,
/// which names the text), or a divergence name (refused with a settings_error that starts
/// with `where`, the front end's words for the argument, e.g. "--logits 'kl': "). Rows are
/// named by the text given.
inline bench::result measure(kind k, const std::string& name, const std::string& where,
                             const bench::batch_shape& shape, bench::number_format format,
                             const bench::settings& how) {
  if (k == kind::logits) {
    const auto d = divergence_named(name);
    if (!d) throw settings_error(where + "unknown divergence; one of " + divergence_list());
    return bench::run_logits(*d, shape, format, how);
  }
  bench::result r = bench::run(parse_spec(name), shape, format, how);
  r.name = name;
  return r;
}

inline nlohmann::json quartiles_json(const bench::quartiles& q) {
  return {{"q1", q.q1}, {"median", q.median}, {"q3", q.q3}};
}

/// One measured row: rates in items (tokens, or logit rows) per second, bytes per item, the
/// floor's rate over the same items and the ratio floor time / kernel time, each as
/// quartiles over the rounds; allocations per call (null when not counted).
inline nlohmann::json result_json(kind k, const bench::result& r) {
  nlohmann::json out = {
      {"kernel", r.name},
      {"kind", k == kind::spec ? "spec" : "logits"},
      {"dtype", std::string(to_string(r.format))},
      {"unit", k == kind::spec ? "tokens" : "rows"},
      {"items", r.items},
      {"threads", r.threads},
      {"rounds", r.rounds},
      {"items_per_second", quartiles_json(r.items_per_second)},
      {"bytes_per_item", r.bytes_per_item},
      {"floor", r.floor},
      {"floor_bytes_per_item", r.floor_bytes_per_item},
      {"floor_items_per_second", quartiles_json(r.floor_items_per_second)},
      {"of_floor", quartiles_json(r.of_floor)},
      {"vector_isa", std::string(r.vector_isa)},
      {"cpu_vector_isa", std::string(r.cpu_vector_isa)}};
  out["allocations_per_call"] =
      std::isnan(r.allocations_per_call) ? nlohmann::json(nullptr) : nlohmann::json(r.allocations_per_call);
  return out;
}

}  // namespace klgrad::frontend::bench_json
