// Trainer presets as data: the clamps, default importance weight and aggregation with which
// verl, OpenRLHF, NeMo-RL, TRL, slime, open-instruct, ROLL and EasyR1 compute their KL term
// (docs/presets.md has the source reading behind every entry).
#pragma once

#include "../core/aggregation.hpp"
#include "../core/clamp.hpp"
#include "../core/importance.hpp"
#include "../core/terms.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace klgrad {

/// The trainer whose conventions a spec takes (spec key preset=).
enum class preset { none, verl, openrlhf, nemo_rl, trl, slime, open_instruct, roll, easyr1 };

inline constexpr preset all_presets[] = {preset::verl,  preset::openrlhf,      preset::nemo_rl,
                                         preset::trl,   preset::slime,         preset::open_instruct,
                                         preset::roll,  preset::easyr1};

inline constexpr std::string_view to_string(preset p) {
  switch (p) {
    case preset::none: return "none";
    case preset::verl: return "verl";
    case preset::openrlhf: return "openrlhf";
    case preset::nemo_rl: return "nemo-rl";
    case preset::trl: return "trl";
    case preset::slime: return "slime";
    case preset::open_instruct: return "open-instruct";
    case preset::roll: return "roll";
    case preset::easyr1: return "easyr1";
  }
  return "?";
}

/// What a preset sets for a term; every field can be overridden by an explicit spec key.
/// beta is not part of a preset: it is the trainer's hyperparameter (pass beta=).
struct preset_conventions {
  clamp_policy clamp;
  weighting weight = weighting::none;
  aggregation agg = aggregation::token_mean;
};

/// Which terms a trainer can express, and how it names them (for error messages).
struct preset_capabilities {
  unsigned estimators;           ///< estimator_bit() of each estimator the trainer has
  bool in_reward, as_loss, both; ///< placements it offers
  bool straight_through_k2;      ///< "k~k2" terms (verl's "+" suffix)
  unsigned loss_estimators;      ///< estimators available as a loss (ROLL: k3 only)
  std::string_view names;        ///< the trainer's own estimator names
};

inline preset_capabilities capabilities(preset p) {
  const unsigned k1 = estimator_bit(estimator::k1), k2 = estimator_bit(estimator::k2),
                 k3 = estimator_bit(estimator::k3), ab = estimator_bit(estimator::abs);
  switch (p) {
    case preset::none: break;
    case preset::verl:
      return {k1 | k2 | k3 | ab, true, true, true, true, k1 | k2 | k3 | ab,
              "kl/k1, abs, mse/k2, low_var_kl/k3, and NAME+ (value of NAME, k2 gradient)"};
    case preset::openrlhf:
      return {k1 | k2 | k3, true, true, false, false, k1 | k2 | k3, "k1, k2, k3"};
    case preset::nemo_rl:
      return {k1 | k2 | k3, true, true, false, false, k1 | k2 | k3, "k1, k2, k3"};
    case preset::trl:
      return {k3, false, true, false, false, k3, "k3 only (per_token_kl), as a loss only"};
    case preset::slime:
      return {k1 | k2 | k3, true, true, false, false, k1 | k2 | k3,
              "k1, k2, k3, low_var_kl (k3 with clamp=value:-10:10/after-weight)"};
    case preset::open_instruct:
      return {k1 | k2 | k3, false, true, false, false, k1 | k2 | k3,
              "kl_estimator 0 (k1), 1 (k2), 2 (k3), 3 (k1 with is=differentiable), as a loss only"};
    case preset::roll:
      return {k1 | k2 | k3 | ab, true, true, true, false, k3,
              "kl, abs, mse, k3 in the reward; the KL loss is hard-coded k3"};
    case preset::easyr1:
      return {k1 | k2 | k3 | ab, true, true, false, false, k1 | k2 | k3 | ab,
              "kl, abs, mse, low_var_kl"};
  }
  return {0xFu, true, true, true, true, 0xFu, ""};
}

/// One of a trainer's own estimator names, as the spec's term accepts it under preset=P
/// ("low_var_kl-as-loss,preset=verl"): the klgrad estimators it stands for and the spec keys
/// it adds (as a loss, in the reward), which explicit keys override.
struct estimator_alias {
  std::string_view name;
  estimator value, gradient;
  std::string_view loss_keys = "", reward_keys = "";
};

/// Each trainer's own estimator names (docs/presets.md). klgrad's k1, k2, k3, abs stay valid
/// under every preset; verl's NAME+ (value of NAME, k2 gradient) is built from these names.
inline std::vector<estimator_alias> estimator_aliases(preset p) {
  using e = estimator;
  switch (p) {
    case preset::verl:
      return {{"kl", e::k1, e::k1}, {"mse", e::k2, e::k2}, {"low_var_kl", e::k3, e::k3}};
    case preset::easyr1:
      return {{"kl", e::k1, e::k1}, {"mse", e::k2, e::k2}, {"low_var_kl", e::k3, e::k3}};
    case preset::roll: return {{"kl", e::k1, e::k1}, {"mse", e::k2, e::k2}};
    case preset::slime:
      return {{"low_var_kl", e::k3, e::k3, "clamp=value:-10:10/after-weight", "clamp=value:-10:10"}};
    case preset::open_instruct:
      return {{"0", e::k1, e::k1}, {"1", e::k2, e::k2}, {"2", e::k3, e::k3},
              {"3", e::k1, e::k1, "is=differentiable"}};
    case preset::none:
    case preset::openrlhf:
    case preset::nemo_rl:
    case preset::trl: break;
  }
  return {};
}

/// Why a trainer cannot express a term ("" when it can).
inline std::string preset_mismatch(preset p, const term& t) {
  if (p == preset::none) return "";
  const preset_capabilities c = capabilities(p);
  const std::string who = std::string("preset=") + std::string(to_string(p)) + ": ";
  const std::string names = std::string(" (its estimators: ") + std::string(c.names) + ")";
  if (!(c.estimators & estimator_bit(t.value_estimator)))
    return who + "the trainer has no " + std::string(to_string(t.value_estimator)) +
           " estimator" + names;
  if (t.straight_through() && !(c.straight_through_k2 && t.gradient_estimator == estimator::k2))
    return who + "the trainer has no straight-through term " +
           std::string(to_string(t.value_estimator)) + "~" +
           std::string(to_string(t.gradient_estimator)) + names;
  if (t.where == placement::in_reward && !c.in_reward)
    return who + "the trainer has no KL in the reward" + names;
  if (t.where == placement::as_loss && !c.as_loss)
    return who + "the trainer has no KL loss" + names;
  if (t.where == placement::both && !c.both)
    return who + "the trainer cannot put the same KL term in the reward and the loss" + names;
  if (has_loss_part(t.where) && !(c.loss_estimators & estimator_bit(t.value_estimator)))
    return who + "the trainer's KL loss cannot use " + std::string(to_string(t.value_estimator)) +
           names;
  return "";
}

/// The conventions of a trainer for a term (call preset_mismatch first).
///
///  verl, easyr1:   k3 (low_var_kl) clamps s to [-20, 20] before exp and its value to
///                  [-10, 10]; other estimators unclamped; no weight; token-mean.
///  openrlhf:       every estimator's value clamped to [-10, 10], no log-ratio clamp; no
///                  weight; token-mean (global over the optimizer step).
///  nemo-rl:        s clamped to [-20, 20] (weight detached where active), the weighted term
///                  w*k clamped to [-10, 10]; the loss weight is exp(lp - lb) with gradient
///                  (lb = sg(lp) by default, the generation log-probs with
///                  use_on_policy_kl_approximation); the in-reward term has the clamps and
///                  no weight; token-mean (over N + 1e-8: see denominators()).
///  trl:            k3 unclamped; no weight (use_bias_correction_kl: is=differentiable,
///                  importance_sampling_level=sequence: is-level=sequence-mean); token-mean
///                  (loss_type=dapo).
///  slime:          unclamped (low_var_kl adds clamp=value:-10:10/after-weight); no weight
///                  (use-unbiased-kl: is=differentiable); seq-mean-token-mean.
///  open-instruct:  s clamped to [-40, 40] for every estimator, no value clamp; no weight
///                  (estimator 3: k1 with is=differentiable); token-mean.
///  roll:           k3's value clamped to [-10, 10], no log-ratio clamp; no weight;
///                  seq-mean-token-mean (with the denominators' 1e-8: see denominators()).
inline preset_conventions conventions(preset p, const term& t) {
  preset_conventions out;
  const unsigned k3 = estimator_bit(estimator::k3);
  switch (p) {
    case preset::none: break;
    case preset::verl:
    case preset::easyr1:
      out.clamp.log_lo = -20;
      out.clamp.log_hi = 20;
      out.clamp.value_lo = -10;
      out.clamp.value_hi = 10;
      out.clamp.estimators = k3;
      break;
    case preset::openrlhf:
      out.clamp.value_lo = -10;
      out.clamp.value_hi = 10;
      break;
    case preset::nemo_rl:
      out.clamp.log_lo = -20;
      out.clamp.log_hi = 20;
      out.clamp.value_lo = -10;
      out.clamp.value_hi = 10;
      if (t.where == placement::as_loss) {
        out.clamp.after_weight = true;
        out.clamp.detach_weight = true;
        out.weight = weighting::differentiable;
      }
      break;
    case preset::trl: break;
    case preset::slime: out.agg = aggregation::seq_mean_token_mean; break;
    case preset::open_instruct:
      out.clamp.log_lo = -40;
      out.clamp.log_hi = 40;
      break;
    case preset::roll:
      out.clamp.value_lo = -10;
      out.clamp.value_hi = 10;
      out.clamp.estimators = k3;
      out.agg = aggregation::seq_mean_token_mean;
      break;
  }
  return out;
}

/// The epsilons a trainer's own aggregation adds to its denominators in a mode (0 where it
/// adds none, and in modes the trainer does not have): the spec keys agg-eps and
/// agg-seq-eps that preset=P gives unless they are written out.
struct preset_denominators {
  double eps = 0.0;      ///< added to N_tokens or B
  double seq_eps = 0.0;  ///< added to n_b
};

///  verl:      seq-mean-token-mean divides each sequence's sum by n_b + 1e-8 (B exact).
///  openrlhf:  its per-sample mode (seq-mean-token-mean) likewise n_b + 1e-8; the KL loss
///             itself always uses the exact global token mean.
///  nemo-rl:   token-mean divides by N + 1e-8; seq-mean-token-mean by (n_b + 1e-8) and
///             (B + 1e-8).
///  roll:      seq-mean-token-sum by B + 1e-8; seq-mean-token-mean by (n_b + 1e-8) and
///             (B + 1e-8); token-mean exact.
///  trl, slime clamp their counts to at least 1, which changes nothing for a sequence or
///  batch with a valid token; open-instruct and easyr1 add none klgrad can express
///  (docs/presets.md).
inline preset_denominators denominators(preset p, aggregation mode) {
  preset_denominators out;
  constexpr double eps = 1e-8;
  switch (p) {
    case preset::verl:
    case preset::openrlhf:
      if (mode == aggregation::seq_mean_token_mean) out.seq_eps = eps;
      break;
    case preset::nemo_rl:
      if (mode == aggregation::token_mean) out.eps = eps;
      if (mode == aggregation::seq_mean_token_mean) out.eps = out.seq_eps = eps;
      break;
    case preset::roll:
      if (mode == aggregation::seq_mean_token_sum) out.eps = eps;
      if (mode == aggregation::seq_mean_token_mean) out.eps = out.seq_eps = eps;
      break;
    case preset::none:
    case preset::trl:
    case preset::slime:
    case preset::open_instruct:
    case preset::easyr1: break;
  }
  return out;
}

/// Why a trainer's aggregation of the same name is another one in klgrad ("" when it is
/// not): ROLL's seq-mean-token-sum-norm divides by L only, which is klgrad's token-sum-norm.
inline std::string preset_aggregation_mismatch(preset p, aggregation mode) {
  if (p == preset::roll && mode == aggregation::seq_mean_token_sum_norm)
    return "preset=roll: ROLL's seq-mean-token-sum-norm divides the token sum by L only, not "
           "by B*L as klgrad's does: write agg=token-sum-norm,agg-norm=L";
  return "";
}

}  // namespace klgrad
