// Trainer presets as data: the clamps, default importance weight and aggregation with which
// verl, OpenRLHF, NeMo-RL, TRL, slime, open-instruct, ROLL and EasyR1 compute their KL term
// (docs/presets.md has the source reading behind every entry).
#pragma once

#include "../core/aggregation.hpp"
#include "../core/clamp.hpp"
#include "../core/importance.hpp"
#include "../core/terms.hpp"
#include "../support/names.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace klgrad {

/// The trainer whose conventions a spec takes (spec key preset=).
enum class preset { none, verl, openrlhf, nemo_rl, trl, slime, open_instruct, roll, easyr1 };

/// Each preset's name: the one table to_string, the spec's parser and the bindings read
/// (all_presets: every row but none, which names no trainer).
inline constexpr enum_name<preset> preset_names[] = {
    {preset::none, "none"},
    {preset::verl, "verl"},
    {preset::openrlhf, "openrlhf"},
    {preset::nemo_rl, "nemo-rl"},
    {preset::trl, "trl"},
    {preset::slime, "slime"},
    {preset::open_instruct, "open-instruct"},
    {preset::roll, "roll"},
    {preset::easyr1, "easyr1"}};

inline constexpr auto all_presets = detail::values_in<1>(preset_names);

inline constexpr std::string_view to_string(preset x) {
  return detail::name_in(preset_names, x);
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

/// One of a trainer's own estimator names, as the spec's term accepts it under preset=P
/// ("low_var_kl-as-loss,preset=verl"): the klgrad estimators it stands for and the spec keys
/// it adds (as a loss, in the reward), which explicit keys override.
struct estimator_alias {
  std::string_view name;
  estimator value, gradient;
  std::string_view loss_keys = "", reward_keys = "";
};

/// The epsilons a trainer's own aggregation adds to its denominators in a mode (0 where it
/// adds none, and in modes the trainer does not have): the spec keys agg-eps and
/// agg-seq-eps that preset=P gives unless they are written out.
struct preset_denominators {
  double eps = 0.0;      ///< added to N_tokens or B
  double seq_eps = 0.0;  ///< added to n_b
};

namespace detail {

/// A mode whose denominators a trainer's aggregation pads (denominators()).
struct padded_mode {
  bool pads = false;
  aggregation mode = aggregation::token_mean;
  double eps = 0.0, seq_eps = 0.0;
};

/// Everything a preset stands for, as one row of data: what the trainer can express and how
/// it names its estimators (capabilities, estimator_aliases), the clamp, weight and
/// aggregation it gives a term (conventions) and the epsilons of its denominators
/// (denominators). The functions below only read the rows; docs/presets.md has the source
/// reading behind every entry.
struct preset_row {
  preset which;
  preset_capabilities can;
  double log_bound = clamp_policy::inf;    ///< log-ratio clamp [-b, b] (inf: none)
  double value_bound = clamp_policy::inf;  ///< value clamp [-b, b] (inf: none)
  unsigned clamped = clamp_policy::all_estimators_mask;  ///< estimators the clamp acts on
  aggregation agg = aggregation::token_mean;
  /// NeMo-RL: an as-loss term gets the weight exp(lp - lb) with gradient, and its clamp acts
  /// after the weight and detaches it where the log-ratio bound is active.
  bool weighted_loss = false;
  padded_mode padded[2] = {};
  estimator_alias aliases[4] = {};  ///< the trainer's own names; an empty name ends the list
  /// NeMo-RL: without behaviour log-probs a weighted term takes lb = logp (the weight
  /// exp(lp - sg(lp)): value 1, derivative 1) instead of refusing the batch.
  bool behavior_is_logp = false;
};

inline constexpr unsigned k3_bit = estimator_bit(estimator::k3),
                          k1_to_k3 = estimator_bit(estimator::k1) | estimator_bit(estimator::k2) |
                                     k3_bit,
                          every_estimator = k1_to_k3 | estimator_bit(estimator::abs);
inline constexpr double no_bound = clamp_policy::inf, denominator_eps = 1e-8;

inline constexpr preset_row preset_rows[] = {
    {preset::none, {every_estimator, true, true, true, true, every_estimator, ""}},
    {preset::verl,
     {every_estimator, true, true, true, true, every_estimator,
      "kl/k1, abs, mse/k2, low_var_kl/k3, and NAME+ (value of NAME, k2 gradient)"},
     20, 10, k3_bit, aggregation::token_mean, false,
     {{true, aggregation::seq_mean_token_mean, 0.0, denominator_eps}},
     {{"kl", estimator::k1, estimator::k1}, {"mse", estimator::k2, estimator::k2},
      {"low_var_kl", estimator::k3, estimator::k3}}},
    {preset::openrlhf,
     {k1_to_k3, true, true, false, false, k1_to_k3, "k1, k2, k3"},
     no_bound, 10, every_estimator, aggregation::token_mean, false,
     {{true, aggregation::seq_mean_token_mean, 0.0, denominator_eps}}},
    {preset::nemo_rl,
     {k1_to_k3, true, true, false, false, k1_to_k3, "k1, k2, k3"},
     20, 10, every_estimator, aggregation::token_mean, true,
     {{true, aggregation::token_mean, denominator_eps, 0.0},
      {true, aggregation::seq_mean_token_mean, denominator_eps, denominator_eps}},
     {}, true},
    {preset::trl,
     {k3_bit, false, true, false, false, k3_bit, "k3 only (per_token_kl), as a loss only"}},
    {preset::slime,
     {k1_to_k3, true, true, false, false, k1_to_k3,
      "k1, k2, k3, low_var_kl (k3 with clamp=value:-10:10/after-weight)"},
     no_bound, no_bound, every_estimator, aggregation::seq_mean_token_mean, false, {},
     {{"low_var_kl", estimator::k3, estimator::k3, "clamp=value:-10:10/after-weight",
       "clamp=value:-10:10"}}},
    {preset::open_instruct,
     {k1_to_k3, false, true, false, false, k1_to_k3,
      "kl_estimator 0 (k1), 1 (k2), 2 (k3), 3 (k1 with is=differentiable), as a loss only"},
     40, no_bound, every_estimator, aggregation::token_mean, false, {},
     {{"0", estimator::k1, estimator::k1}, {"1", estimator::k2, estimator::k2},
      {"2", estimator::k3, estimator::k3},
      {"3", estimator::k1, estimator::k1, "is=differentiable"}}},
    {preset::roll,
     {every_estimator, true, true, true, false, k3_bit,
      "kl, abs, mse, k3 in the reward; the KL loss is hard-coded k3"},
     no_bound, 10, k3_bit, aggregation::seq_mean_token_mean, false,
     {{true, aggregation::seq_mean_token_sum, denominator_eps, 0.0},
      {true, aggregation::seq_mean_token_mean, denominator_eps, denominator_eps}},
     {{"kl", estimator::k1, estimator::k1}, {"mse", estimator::k2, estimator::k2}}},
    {preset::easyr1,
     {every_estimator, true, true, false, false, every_estimator,
      "kl, abs, mse, low_var_kl"},
     20, 10, k3_bit, aggregation::token_mean, false, {},
     {{"kl", estimator::k1, estimator::k1}, {"mse", estimator::k2, estimator::k2},
      {"low_var_kl", estimator::k3, estimator::k3}}},
};

/// The row of preset p (every preset has one).
inline const preset_row& preset_row_of(preset p) {
  for (const preset_row& row : preset_rows)
    if (row.which == p) return row;
  return preset_rows[0];
}

}  // namespace detail

inline preset_capabilities capabilities(preset p) { return detail::preset_row_of(p).can; }

/// Whether a weighted term under preset p takes lb = logp when the batch has no behaviour
/// log-probs (NeMo-RL's default weight exp(lp - sg(lp))); the kernel asks this, not the name.
inline bool behavior_defaults_to_logp(preset p) {
  return detail::preset_row_of(p).behavior_is_logp;
}

/// Each trainer's own estimator names (docs/presets.md). klgrad's k1, k2, k3, abs stay valid
/// under every preset; verl's NAME+ (value of NAME, k2 gradient) is built from these names.
inline std::vector<estimator_alias> estimator_aliases(preset p) {
  std::vector<estimator_alias> out;
  for (const estimator_alias& a : detail::preset_row_of(p).aliases)
    if (!a.name.empty()) out.push_back(a);
  return out;
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
  const detail::preset_row& row = detail::preset_row_of(p);
  preset_conventions out;
  out.clamp.log_lo = -row.log_bound;
  out.clamp.log_hi = row.log_bound;
  out.clamp.value_lo = -row.value_bound;
  out.clamp.value_hi = row.value_bound;
  out.clamp.estimators = row.clamped;
  out.agg = row.agg;
  if (row.weighted_loss && t.where == placement::as_loss) {
    out.clamp.after_weight = true;
    out.clamp.detach_weight = true;
    out.weight = weighting::differentiable;
  }
  return out;
}

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
  for (const detail::padded_mode& m : detail::preset_row_of(p).padded)
    if (m.pads && m.mode == mode) return {m.eps, m.seq_eps};
  return {};
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
