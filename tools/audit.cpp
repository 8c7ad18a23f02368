// klgrad audit: the exact expected gradient of a spec on a small tabular policy, computed
// through klgrad::evaluate by enumerating every outcome, compared with the exact gradients
// of the divergences it might be estimating.
#include "commands.hpp"
#include "json_file.hpp"

#include <klgrad_frontend/audit_json.hpp>
#include <klgrad_frontend/errors.hpp>

#include <cstdint>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace klgrad::cli {
namespace {

using namespace frontend::audit_input;

std::string fixed_list(const vector& x) {
  std::ostringstream out;
  out << std::setprecision(6) << std::showpos;
  for (Index i = 0; i < x.size(); ++i) out << (i ? " " : "") << x(i);
  return out.str();
}

std::vector<double> as_vector(const nlohmann::ordered_json& x) { return x.get<std::vector<double>>(); }

void print_table(const nlohmann::ordered_json& r) {
  auto list = [](const nlohmann::ordered_json& x) {
    const auto v = as_vector(x);
    return fixed_list(Eigen::Map<const vector>(v.data(), Index(v.size())));
  };
  std::cout << std::setprecision(10);
  std::cout << "spec                     " << r["spec"].get<std::string>() << "\n"
            << "sampling                 " << r["sampling"].get<std::string>() << "\n"
            << "parameters               " << r["parameters"].get<long long>() << "\n"
            << "expected value           " << r["expected_value"].get<double>() << "\n"
            << "KL(pi||ref) (sequence)   " << r["targets"]["rkl"]["value"].get<double>() << "\n"
            << "KL(ref||pi) (sequence)   " << r["targets"]["fkl"]["value"].get<double>() << "\n"
            << "gradient trace variance  " << r["gradient_trace_variance"].get<double>() << "\n\n";
  std::cout << "expected gradient        " << list(r["expected_gradient"]) << "\n";
  for (const char* name : {"rkl", "rkl_token", "fkl", "fkl_token"})
    std::cout << std::left << std::setw(25) << (std::string("target ") + name)
              << list(r["targets"][name]["gradient"]) << "\n";
  std::cout << "\nrelative error ||g - target|| / ||target||:\n";
  for (const char* name : {"rkl", "rkl_token", "fkl", "fkl_token"})
    std::cout << "  " << std::left << std::setw(10) << name << std::setprecision(3)
              << std::scientific << r["relative_error"][name].get<double>() << std::defaultfloat
              << "\n";
  std::cout << "follows                  " << r["follows"].get<std::string>() << "\n";
  if (r.contains("mc")) {
    std::cout << "\nMonte Carlo (" << r["mc"]["samples"].get<long long>() << " samples, seed "
              << r["mc"]["seed"].get<std::uint64_t>() << ")\n"
              << "  gradient               " << list(r["mc"]["gradient"]) << "\n"
              << "  standard error         " << list(r["mc"]["standard_error"]) << "\n";
  }
}

}  // namespace

void add_audit(CLI::App& app) {
  auto cfg = std::make_shared<frontend::audit_input::settings>();
  CLI::App* cmd = app.add_subcommand(
      "audit",
      "Audit a spec on a tabular policy given as JSON {\"vocab\": V, \"steps\": T, \"logits\", "
      "\"ref_logits\", optional \"behavior_logits\"} (1 + V + ... + V^(T-1) rows of V logits, "
      "step by step, prefixes in lexicographic order): the exact expected per-sample gradient "
      "(agg=token-sum, beta=1) of the coefficients klgrad::evaluate gives every outcome, "
      "against the exact gradients of KL(pi||ref) and KL(ref||pi), sequence and per-token.");
  cmd->add_option("--policy", cfg->policy, "policy JSON file (- for stdin)")->required();
  cmd->add_option("--spec", cfg->spec, "KL spec, e.g. k3-as-loss,is=detached")->required();
  cmd->add_option("--sampling", cfg->sampling,
                  "draw sequences from the trained policy or from behavior_logits")
      ->check(CLI::IsMember({"policy", "behavior"}));
  cmd->add_option("--mc", cfg->mc, "also estimate the gradient from N Monte Carlo samples")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", cfg->seed, "seed of the Monte Carlo sampler");
  cmd->add_option("--max-memory", cfg->max_memory,
                  "refuse an audit whose enumeration (or Monte Carlo batch) needs more memory, "
                  "e.g. 512M, 4G (default 1G)")
      ->transform(CLI::AsSizeValue(false));
  cmd->add_option("--format", cfg->format, "output format")->check(CLI::IsMember({"json", "table"}));
  cmd->callback([cfg] {
    if (cfg->mc == 1)
      throw frontend::settings_error("--mc needs at least 2 samples for a standard error");
    const nlohmann::ordered_json r = audit(parse_spec(cfg->spec), read_json(cfg->policy), *cfg);
    if (cfg->format == "json")
      std::cout << r.dump() << "\n";
    else
      print_table(r);
  });
}

}  // namespace klgrad::cli
