// The engine of `klgrad report`: the canonical specs, the built-in problems, the audit of
// each spec on- and off-policy and the toy training runs, collected as JSON (printing,
// CSV and plots live in report.cpp; tests include this header directly).
#pragma once

#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/targets.hpp>
#include "toy_trainer.hpp"
#include <klgrad/spec.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace klgrad::cli::report {

using oracle::Index;
using oracle::matrix;
using oracle::tabular;
using oracle::vector;

/// The specs the report audits and trains with, in table order.
inline const std::vector<std::string>& canonical_specs() {
  static const std::vector<std::string> specs = {
      "k1-in-reward",
      "k1-in-reward,level=to-go",
      "k1-in-reward,level=sequence",
      "k1-as-loss",
      "k1-both",
      "k2-in-reward",
      "k2-as-loss",
      "k2-as-loss,level=sequence",
      "k2-both",
      "k3-in-reward",
      "k3-as-loss",
      "k3-as-loss,level=sequence",
      "k3-both",
      "k3~k2-as-loss",
      "k2-as-loss,is=detached",
      "k3-as-loss,is=detached",
      "k3-as-loss,is=differentiable",
      "k1-as-loss,is=differentiable",
      "k1-in-reward,level=to-go,is=detached",
      "k2-as-loss,level=sequence,is=detached",
  };
  return specs;
}

/// The spec whose runs define the noise floor (it follows grad KL_seq on-policy).
inline const char* floor_spec = "k1-in-reward,level=to-go";

struct settings {
  Index steps = 3000;           ///< sampled batches per run
  Index batch = 64;             ///< sequences per batch
  Index epochs = 4;             ///< updates per batch in the off-policy mode
  double learning_rate = 2.0;   ///< plain SGD on the logits
  std::uint64_t seed = 1;       ///< training sampler seed (problems have their own)
  double beta = 0.1;
  double behavior_noise = 0.5;  ///< audit: mu's logits = pi's + N(0, noise^2)
  std::string policy_file;      ///< --policy: the user's problem instead of the built-ins
  std::vector<std::string> specs = canonical_specs();
  double window = 0.2;          ///< final measurements average the last 20% of the steps
  double tolerance_factor = 4.0;  ///< converged when final TV <= factor * noise floor (see docs/choosing.md)
};

/// One problem with the policy the audit is run at.
struct case_ {
  toy::problem problem;
  tabular audit_pi, audit_mu;
  std::string audit_at;  ///< description of the audit point
};

inline tabular perturbed(const tabular& p, double noise, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, noise);
  matrix z = p.logits;
  for (Index i = 0; i < z.size(); ++i) z.data()[i] += n(rng);
  return tabular(p.vocab, p.steps, std::move(z));
}

/// The built-in problems: a 4-token, 3-step problem (64 sequences, 84 logits) and a
/// 2-token, 5-step one (32 sequences, 62 logits), where part 2 of the KL gradient (a token's
/// effect on the later tokens' KL) matters more. Audited at pi* with mu = pi* perturbed.
inline std::vector<case_> builtin_cases(const settings& cfg) {
  std::vector<case_> out;
  const std::pair<const char*, std::pair<Index, Index>> sizes[] = {{"V4T3", {4, 3}},
                                                                   {"V2T5", {2, 5}}};
  std::uint64_t seed = 7;
  for (const auto& [name, vt] : sizes) {
    case_ c;
    c.problem = toy::make_problem(name, vt.first, vt.second, cfg.beta, seed);
    c.audit_pi = toy::optimum(c.problem);
    c.audit_mu = perturbed(c.audit_pi, cfg.behavior_noise, seed + 1000);
    c.audit_at = "pi = pi*, mu = pi* with logits + N(0, " +
                 klgrad::detail::format_number(cfg.behavior_noise) + "^2)";
    out.push_back(std::move(c));
    seed += 1;
  }
  return out;
}

/// A relative error against each target; "follows" is the first within 1e-9 (audit's rule),
/// "nearest" the smallest.
inline nlohmann::ordered_json audit_one(const spec& s, const tabular& pi, const tabular& ref,
                                        const tabular* mu) {
  const oracle::exact_expectation e = oracle::enumerate(s, pi, ref, mu);
  const oracle::targets tg = oracle::exact_targets(pi, ref);
  std::vector<std::pair<std::string, vector>> named = {{"rkl", tg.rkl_gradient},
                                                       {"rkl_token", tg.rkl_token_gradient},
                                                       {"fkl", tg.fkl_gradient},
                                                       {"fkl_token", tg.fkl_token_gradient}};
  if (mu) {
    const vector d = oracle::state_distribution(*mu);
    named.emplace_back("rkl_token@mu", oracle::rkl_token_gradient(pi, ref, d));
    named.emplace_back("fkl_token@mu", oracle::fkl_token_gradient(pi, ref, d));
  }
  nlohmann::ordered_json out;
  std::string follows = "none", nearest;
  double best = INFINITY;
  for (const auto& [name, target] : named) {
    const double r = oracle::relative_error(e.gradient, target);
    out["relative_error"][name] = r;
    if (follows == "none" && r <= 1e-9) follows = name;
    if (r < best) best = r, nearest = name;
  }
  out["follows"] = follows;
  out["nearest"] = nearest;
  out["nearest_error"] = best;
  out["expected_value"] = e.value;
  out["gradient_trace_variance"] = e.trace_variance;
  return out;
}

inline nlohmann::ordered_json measures_json(const toy::measures& m) {
  return {{"tv", m.tv}, {"kl", m.kl}, {"reward", m.reward}, {"objective", m.objective}};
}

/// A callback told (done, total, what) before each training run.
using progress_fn = std::function<void(Index, Index, const std::string&)>;

/// A run's curve, for CSV and plots.
struct curve {
  std::string problem, mode, spec;
  std::vector<toy::train_point> points;
};

/// The verdict of a run from its end point: "diverged", "pi*" (final TV within the
/// tolerance), "elsewhere" (settled: its TV moved less than the tolerance between the last
/// two windows), or "drifting".
inline std::string verdict(const toy::train_result& r, double tolerance, double window) {
  if (r.diverged) return "diverged";
  const toy::measures last = toy::window_mean(r, window);
  if (last.tv <= tolerance) return "pi*";
  toy::train_result earlier = r;
  const double cut = double(r.steps_done) * (1.0 - window);
  earlier.curve.clear();
  for (const auto& p : r.curve)
    if (double(p.step) < cut) earlier.curve.push_back(p);
  earlier.steps_done = Index(cut);
  const double before = toy::window_mean(earlier, window / (1.0 - window)).tv;
  return std::abs(last.tv - before) <= tolerance ? "elsewhere" : "drifting";
}

/// Runs everything and returns the report as JSON; curves are appended to `curves` when
/// it is not null.
inline nlohmann::ordered_json run(const settings& cfg, const std::vector<case_>& cases,
                                  const progress_fn& progress, std::vector<curve>* curves) {
  nlohmann::ordered_json out;
  out["settings"] = {{"steps", cfg.steps},
                     {"batch", cfg.batch},
                     {"learning_rate", cfg.learning_rate},
                     {"off_policy_epochs", cfg.epochs},
                     {"seed", cfg.seed},
                     {"beta", cfg.beta},
                     {"window", cfg.window},
                     {"tolerance_factor", cfg.tolerance_factor},
                     {"noise_floor_spec", floor_spec}};
  out["specs"] = cfg.specs;
  std::vector<spec> parsed;
  for (const auto& s : cfg.specs) parsed.push_back(parse_spec(s));
  const Index runs_per_case = Index(2 * (cfg.specs.size() + 1));
  const Index total = runs_per_case * Index(cases.size());
  Index done = 0;
  out["problems"] = nlohmann::ordered_json::array();
  for (const case_& c : cases) {
    const toy::problem& pb = c.problem;
    nlohmann::ordered_json P;
    P["name"] = pb.name;
    P["vocab"] = pb.ref.vocab;
    P["steps"] = pb.ref.steps;
    P["beta"] = pb.beta;
    double log_z = 0;
    const tabular pstar = toy::optimum(pb, &log_z);
    const vector pstar_probs = toy::sequence_probs(pstar);
    P["optimum"] = measures_json(toy::measure(pb, pstar, pstar_probs));
    P["optimum"]["beta_log_z"] = pb.beta * log_z;
    P["start"] = measures_json(toy::measure(pb, pb.start, pstar_probs));

    // (a) audit
    P["audit"]["at"] = c.audit_at;
    P["audit"]["rows"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < parsed.size(); ++i) {
      nlohmann::ordered_json row;
      row["spec"] = cfg.specs[i];
      row["on_policy"] = audit_one(parsed[i], c.audit_pi, pb.ref, nullptr);
      row["off_policy"] = audit_one(parsed[i], c.audit_pi, pb.ref, &c.audit_mu);
      P["audit"]["rows"].push_back(std::move(row));
    }

    // (b) training
    for (const char* mode : {"on-policy", "off-policy"}) {
      toy::train_options o;
      o.batch = cfg.batch;
      o.steps = cfg.steps;
      o.epochs = std::string(mode) == "on-policy" ? 1 : cfg.epochs;
      o.learning_rate = cfg.learning_rate;
      o.seed = cfg.seed;
      o.record_every = std::max<Index>(1, cfg.steps / 300);
      auto note = [&](const std::string& what) {
        if (progress) progress(done, total, pb.name + " " + mode + " " + what);
        ++done;
      };
      // The noise floor: the floor spec started at pi* itself, same steps and seed.
      toy::problem at_optimum = pb;
      at_optimum.start = pstar;
      note("noise floor");
      const toy::train_result fr = toy::train(at_optimum, parse_spec(floor_spec), o);
      const double floor_tv = toy::window_mean(fr, cfg.window).tv;
      const double tolerance = cfg.tolerance_factor * floor_tv;
      nlohmann::ordered_json M;
      M["updates_per_batch"] = o.epochs;
      M["noise_floor"] = floor_tv;
      M["tolerance"] = tolerance;
      M["runs"] = nlohmann::ordered_json::array();
      for (std::size_t i = 0; i < parsed.size(); ++i) {
        note(cfg.specs[i]);
        const toy::train_result r = toy::train(pb, parsed[i], o);
        nlohmann::ordered_json run;
        run["spec"] = cfg.specs[i];
        run["final"] = measures_json(toy::window_mean(r, cfg.window));
        run["last"] = measures_json(r.curve.back().at);
        run["steps_done"] = r.steps_done;
        run["verdict"] = verdict(r, tolerance, cfg.window);
        M["runs"].push_back(std::move(run));
        if (curves) curves->push_back({pb.name, mode, cfg.specs[i], r.curve});
      }
      P["training"][mode] = std::move(M);
    }
    out["problems"].push_back(std::move(P));
  }
  if (progress) progress(done, total, "done");
  return out;
}

}  // namespace klgrad::cli::report
