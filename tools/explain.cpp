// klgrad explain: the verdict on one or more specs -- which gradient each follows in
// expectation on one state and over sequences, on-policy and from a behaviour policy --
// from the theory (klgrad::explain), as JSON, text or a Markdown table.
#include "commands.hpp"
#include "trainer_yaml.hpp"

#include <klgrad_frontend/errors.hpp>
#include <klgrad_frontend/explain_json.hpp>
#include <klgrad_frontend/trainer_config.hpp>

#include <klgrad/explain.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace klgrad::cli {
namespace {

using frontend::config_map;
using frontend::find_trainer;
using frontend::read_trainer_config;
using frontend::settings_error;
using frontend::to_json;
using frontend::trainer_info;
using frontend::trainer_reading;
using klgrad::detail::format_number;

struct explain_settings {
  std::vector<std::string> specs;
  std::string format = "json";
  std::string trainer, config;
  std::vector<std::string> sets;
};

void print_text(const verdict& v) {
  std::cout << v.sentence << "\n";
  const std::pair<const char*, const follows*> cells[] = {
      {"on-policy, one state      ", &v.on_policy_token},
      {"on-policy, sequences      ", &v.on_policy_sequence},
      {"from mu, one state        ", &v.off_policy_token},
      {"from mu, sequences        ", &v.off_policy_sequence}};
  for (const auto& [label, f] : cells)
    std::cout << "  " << label << f->name << "\n      " << f->sentence << "\n";
}

std::string cell_text(const follows& f) { return "`" + f.name + "`"; }

/// --format table of a trainer's configuration: one row per term, then the defaults taken
/// and the warnings.
void print_table(const trainer_reading& t) {
  std::cout << "trainer " << t.trainer << " (defaults as of " << t.commit << ")\n\n";
  std::cout << "role    beta        on-policy one state / sequences   from mu one state / "
               "sequences   spec\n";
  for (const auto& term : t.terms) {
    const verdict v = explain(term.spec);
    char line[256];
    std::snprintf(line, sizeof line, "%-7s %-11s %-15s %-17s %-15s %-17s ", term.role.c_str(),
                  format_number(term.beta).c_str(), v.on_policy_token.name.c_str(),
                  v.on_policy_sequence.name.c_str(), v.off_policy_token.name.c_str(),
                  v.off_policy_sequence.name.c_str());
    std::cout << line << to_string(term.spec) << "\n";
  }
  if (t.terms.empty()) std::cout << "(no KL term)\n";
  std::cout << "\ndefaults used:\n";
  for (const auto& d : t.defaults_used) std::cout << "  " << d << "\n";
  std::cout << "\nwarnings:\n";
  for (const auto& w : t.warnings) std::cout << "  - " << w << "\n";
}

void explain_trainer(const explain_settings& cfg) {
  if (cfg.config.empty())
    throw settings_error("--trainer needs --config FILE (the trainer's own configuration)");
  if (!cfg.specs.empty()) throw settings_error("give --spec or --trainer, not both");
  if (cfg.format != "json" && cfg.format != "table")
    throw settings_error("--format " + cfg.format + " with --trainer: use json or table");
  const trainer_info& info = find_trainer(cfg.trainer);
  std::vector<std::string> notes;
  const config_map keys = read_config_file(info, cfg.config, notes);
  const trainer_reading t = read_trainer_config(cfg.trainer, keys, cfg.sets, notes);
  if (cfg.format == "json") std::cout << to_json(t).dump(2) << "\n";
  else print_table(t);
}

}  // namespace

void add_explain(CLI::App& app) {
  auto cfg = std::make_shared<explain_settings>();
  CLI::App* cmd = app.add_subcommand(
      "explain",
      "Which gradient a spec follows in expectation, from the theory: on one state (T = 1) and "
      "over sequences (T >= 2), with samples from pi and from a behaviour policy mu. Names: "
      "rkl, rkl_token, fkl, fkl_token (the audit's targets), zero, none (biased), or an exact "
      "combination such as 'rkl - fkl'; '(mu)' marks per-state gradients under mu's states.");
  cmd->add_option("--spec", cfg->specs, "KL spec(s), e.g. k3-as-loss,is=detached");
  cmd->add_option("--format", cfg->format,
                  "output format (markdown: one table row per spec; with --trainer: json or table)")
      ->check(CLI::IsMember({"json", "text", "markdown", "table"}));
  cmd->add_option("--trainer", cfg->trainer,
                  "read the trainer's own configuration instead of a spec: verl, openrlhf, trl, "
                  "nemo-rl, slime, open-instruct, roll, easyr1 (docs/explain.md)");
  cmd->add_option("--config", cfg->config,
                  "with --trainer: its configuration file (YAML or JSON; for openrlhf, slime and "
                  "open-instruct a file holding the command line)");
  cmd->add_option("--set", cfg->sets, "with --trainer: KEY=VALUE overrides a key of the file");
  cmd->callback([cfg] {
    if (!cfg->trainer.empty()) return explain_trainer(*cfg);
    if (!cfg->config.empty() || !cfg->sets.empty())
      throw settings_error("--config and --set go with --trainer NAME");
    if (cfg->specs.empty())
      throw settings_error("explain needs --spec SPEC or --trainer NAME --config FILE");
    if (cfg->format == "table")
      throw settings_error("--format table goes with --trainer; use text or markdown");
    std::vector<verdict> verdicts;
    for (const auto& text : cfg->specs) verdicts.push_back(explain(parse_spec(text)));
    if (cfg->format == "json") {
      if (verdicts.size() == 1) {
        std::cout << to_json(verdicts[0]).dump(2) << "\n";
      } else {
        nlohmann::ordered_json all = nlohmann::ordered_json::array();
        for (const auto& v : verdicts) all.push_back(to_json(v));
        std::cout << all.dump(2) << "\n";
      }
    } else if (cfg->format == "text") {
      for (std::size_t i = 0; i < verdicts.size(); ++i) {
        if (i) std::cout << "\n";
        print_text(verdicts[i]);
      }
    } else {
      std::cout << "| spec | on-policy, one state | on-policy, sequences | from mu, one state | "
                   "from mu, sequences |\n|---|---|---|---|---|\n";
      for (const auto& v : verdicts)
        std::cout << "| `" << v.spec << "` | " << cell_text(v.on_policy_token) << " | "
                  << cell_text(v.on_policy_sequence) << " | " << cell_text(v.off_policy_token)
                  << " | " << cell_text(v.off_policy_sequence) << " |\n";
    }
  });
}

}  // namespace klgrad::cli
