// klgrad eval: a batch in JSON, a spec, and the per-token values and coefficients out; or a
// batch of full policy and reference logits, and the exact per-state divergences and their
// gradients out (docs/logits.md).
#include "commands.hpp"
#include "json_file.hpp"

#include <klgrad_frontend/eval_json.hpp>

#include <iostream>
#include <memory>

namespace klgrad::cli {

void add_eval(CLI::App& app) {
  auto cfg = std::make_shared<frontend::eval_input::settings>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Evaluate a spec on a batch given as JSON: {\"logp\", \"ref\", optional \"behavior\", "
      "optional \"mask\" (1/0 or true/false)} as lists of rows (padded), or 1-D lists plus "
      "\"offsets\" (packed); null stands for NaN; no other key. Prints JSON: spec, value, coef, loss, kl, kl_sequence, tokens, "
      "sequences, guarded, dropped. With a \"logits\" key the input is full logits instead "
      "(docs/logits.md): {\"logits\", \"ref_logits\"} as B x T x V or N x V lists, optional "
      "\"mask\", \"divergence\" (reverse-kl, forward-kl, jensen-shannon, forward-kl-top-k, "
      "reverse-kl-top-k, forward-kl-top-k-tail, reverse-kl-top-k-tail), "
      "\"lambda\", \"top_k\", \"temperature\", \"log_probs\", \"gradient\", \"ids\", \"coef\"; "
      "\"-inf\" stands for a masked vocabulary entry. Prints divergence, value, grad, loss, "
      "mean, rows, sequences (+ indices, logp, logits_grad).");
  cmd->add_option("--spec", cfg->spec,
                  "KL spec, e.g. k3-as-loss,is=detached,beta=0.04 (required for logp/ref input); "
                  "for logits input only agg=, agg-norm=, beta=, e.g. agg=token-sum,beta=0.04");
  cmd->add_option("input", cfg->input, "JSON batch file (stdin when absent or -)");
  cmd->add_option("--type", cfg->type,
                  "precision of the computation; for logits input also bf16 or fp16: the "
                  "logits rounded to that format and read as 16-bit logits, computed in float")
      ->check(CLI::IsMember({"float", "double", "bf16", "fp16"}));
  cmd->add_option("--nonfinite", cfg->nonfinite,
                  "non-finite unmasked log-probabilities: raise or propagate (logits input "
                  "always raises)")
      ->check(CLI::IsMember({"raise", "propagate"}));
  cmd->add_option("--tokens", cfg->tokens, "global N_tokens (data-parallel shard)");
  cmd->add_option("--sequences", cfg->sequences, "global B_nonempty (data-parallel shard)");
  cmd->callback([cfg] {
    const nlohmann::json out = frontend::eval_input::evaluate_input(read_json(cfg->input), *cfg);
    std::cout << out.dump() << "\n";
  });
}

}  // namespace klgrad::cli
