// klgrad explain: the verdict on one or more specs -- which gradient each follows in
// expectation on one state and over sequences, on-policy and from a behaviour policy --
// from the theory (klgrad::explain), as JSON, text or a Markdown table.
#include "commands.hpp"
#include "explain_json.hpp"

#include <klgrad/explain.hpp>

#include <memory>
#include <string>
#include <vector>

namespace klgrad::cli {
namespace {

struct explain_settings {
  std::vector<std::string> specs;
  std::string format = "json";
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

}  // namespace

void add_explain(CLI::App& app) {
  auto cfg = std::make_shared<explain_settings>();
  CLI::App* cmd = app.add_subcommand(
      "explain",
      "Which gradient a spec follows in expectation, from the theory: on one state (T = 1) and "
      "over sequences (T >= 2), with samples from pi and from a behaviour policy mu. Names: "
      "rkl, rkl_token, fkl, fkl_token (the audit's targets), zero, none (biased), or an exact "
      "combination such as 'rkl - fkl'; '(mu)' marks per-state gradients under mu's states.");
  cmd->add_option("--spec", cfg->specs, "KL spec(s), e.g. k3-as-loss,is=detached")->required();
  cmd->add_option("--format", cfg->format, "output format (markdown: one table row per spec)")
      ->check(CLI::IsMember({"json", "text", "markdown"}));
  cmd->callback([cfg] {
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
