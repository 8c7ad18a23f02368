// Every decision of one evaluate() call, resolved once from the spec and the options: the
// kernel's passes read the plan, never the spec.
#pragma once

#include "../core/clamp.hpp"
#include "../core/estimators.hpp"
#include "../spec/presets.hpp"
#include "../spec/spec.hpp"
#include "../support/errors.hpp"
#include "evaluate_options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace klgrad::detail {

/// The pass a sequence takes (passes.hpp): one per path of the kernel.
enum class sequence_pass {
  fused,          ///< token level without weights: value and coefficient in one pass
  token,          ///< token level: each token's own weight multiplies its terms
  after_weight,   ///< token level: an as-loss term clamped after its weight
  per_decision,   ///< per-decision weights: the weighted penalties summed to go
  prefix,         ///< differentiable prefix weights, whose gradient reaches earlier tokens
  sequence_mean,  ///< a differentiable sequence-mean weight, whose gradient reaches every token
  to_go,          ///< in-reward penalties summed to go
  sequence,       ///< the sequence's sums, broadcast to its tokens
};

/// Where the importance weights read the behaviour log-probs lb.
enum class behavior_source {
  batch,  ///< the batch's own (or none: the spec is not weighted)
  logp,   ///< logp itself, the on-policy weight exp(lp - sg(lp)) of a preset that takes it
          ///< when the batch has none (spec/presets.hpp's behavior_is_logp column)
};

/// An evaluate() call's settings, resolved for the estimators Ev (value) and Eg (gradient).
template <class T>
struct plan {
  // The term and its weights.
  placement where = placement::in_reward;
  weighting mode = weighting::none;
  weight_level weights = weight_level::token;
  bool weighted = false;  ///< tokens are weighted by pi/mu (is != none)
  behavior_source behavior = behavior_source::batch;
  level at_level = level::token;
  sequence_pass pass = sequence_pass::fused;
  T gamma = 1;            ///< discount of the sums to go
  // Inputs, guards and clamps.
  nonfinite_policy nonfinite = nonfinite_policy::raise;
  T lowest = 0, highest = 0;  ///< guard on the log-ratio for the estimators in use
  clamp_policy clamp;
  bool clamp_value = false, clamp_gradient = false;  ///< the clamp acts on Ev / Eg
  bool detach = false;   ///< detach the weight where the log-ratio bound is active
  T log_bound = 0;       ///< guard on log weights
  T log_clip = 0, clip = 0;  ///< truncation (log C = +inf when off)
  T log_lo = 0, log_hi = 0;  ///< band mask in log space
  // Aggregation: a_{b,t} and beta.
  double beta = 1;
  aggregation aggregation_mode = aggregation::token_mean;
  aggregation_constants constants;
  Index tokens = -1, sequences = -1;  ///< N_tokens and B_nonempty (-1: count the batch)
};

/// The guard's bound on s below (lowest) and above (highest) for estimator E: where E stays
/// finite, or nothing when E is clamped to a log-ratio band inside that range (verl's k3+ at
/// s = -100 keeps the k2 gradient -100, as verl does).
template <class E, class T>
T lowest_for(const clamp_policy& cp, bool clamped) {
  return clamped && T(cp.log_lo) >= E::template lowest_safe<T>()
             ? -std::numeric_limits<T>::max()
             : E::template lowest_safe<T>();
}
template <class E, class T>
T highest_for(const clamp_policy& cp, bool clamped) {
  return clamped && T(cp.log_hi) <= E::template highest_safe<T>()
             ? std::numeric_limits<T>::max()
             : E::template highest_safe<T>();
}

template <class T>
sequence_pass pass_for(const plan<T>& p) {
  switch (p.at_level) {
    case level::to_go: return sequence_pass::to_go;
    case level::sequence: return sequence_pass::sequence;
    case level::token: break;
  }
  const bool differentiable = p.mode == weighting::differentiable;
  if (!p.weighted && !(p.clamp.after_weight && (p.clamp_value || p.clamp_gradient)) &&
      !uses_sequence_count(p.aggregation_mode))
    return sequence_pass::fused;
  if (p.clamp.after_weight && p.clamp_value) return sequence_pass::after_weight;
  if (p.weights == weight_level::per_decision) return sequence_pass::per_decision;
  if (differentiable && p.weights == weight_level::prefix) return sequence_pass::prefix;
  if (differentiable && p.weights == weight_level::sequence_mean)
    return sequence_pass::sequence_mean;
  // Token weights, detached prefix or sequence-mean weights, clamps, or a mode that divides
  // by n_b.
  return sequence_pass::token;
}

/// Where a weighted spec's weights read lb, for a batch that has behaviour log-probs or not
/// (an empty batch has no data to tell, and nothing to weight). Refuses a weighted spec
/// whose batch has none, unless the spec's preset takes lb = logp. The error's reason and
/// argument say what is missing; each front end words it for its own interface.
inline behavior_source behavior_source_for(const spec& config, bool batch_has_behavior) {
  const importance& is = config.importance;
  if (!is.active() || batch_has_behavior) return behavior_source::batch;
  if (behavior_defaults_to_logp(config.preset)) return behavior_source::logp;
  raise(input_error(cat("the spec weights tokens by pi/mu (is=", to_string(is.mode),
                        ") but the batch has no behavior log-probs; add them with "
                        ".with_behavior(lb)"),
                    input_reason::missing_behavior, "behavior"));
}

/// The plan of a spec for estimators Ev and Eg, with the caller's options, for a batch that
/// has behaviour log-probs or not. Counts the batch does not give (tokens, sequences) stay
/// -1 until run() has counted them.
template <class Ev, class Eg, class T>
plan<T> make_plan(const spec& config, const options& opt, bool batch_has_behavior) {
  const clamp_policy& cp = config.clamp;
  // parse_spec refuses such a band; a spec assembled in C++ comes here unchecked, and the
  // guard (before the clamp) cannot keep s finite inside a band that excludes 0.
  const std::string band = clamp_band_problem(cp);
  if (!band.empty()) raise<spec_error>(band);
  const importance& is = config.importance;
  const T inf = std::numeric_limits<T>::infinity();
  plan<T> p;
  p.where = config.term.where;
  p.mode = is.mode;
  p.weights = is.level;
  p.weighted = is.active();
  p.behavior = behavior_source_for(config, batch_has_behavior);
  p.at_level = config.level;
  p.gamma = T(config.gamma);
  p.nonfinite = opt.nonfinite;
  p.clamp = cp;
  p.clamp_value = cp.active() && clamps<Ev>(cp);
  p.clamp_gradient = cp.active() && clamps<Eg>(cp);
  p.detach = cp.detach_weight && cp.log_bounded() && (p.clamp_value || p.clamp_gradient) &&
             is.mode == weighting::differentiable;
  // The guard keeps s where each estimator in use stays finite.
  p.lowest = std::max(lowest_for<Ev, T>(cp, p.clamp_value), lowest_for<Eg, T>(cp, p.clamp_gradient));
  p.highest = std::min(highest_for<Ev, T>(cp, p.clamp_value), highest_for<Eg, T>(cp, p.clamp_gradient));
  p.log_bound = exp_bound<T>();
  p.clip = is.truncated() ? T(is.clip) : inf;
  p.log_clip = is.truncated() ? std::log(T(is.clip)) : inf;
  p.log_lo = is.mask_lo > 0 ? std::log(T(is.mask_lo)) : -inf;
  p.log_hi = is.mask_hi < std::numeric_limits<double>::infinity() ? std::log(T(is.mask_hi)) : inf;
  p.beta = config.beta;
  p.aggregation_mode = config.aggregation;
  p.constants = config.aggregation_constants;
  p.tokens = opt.counts.tokens;
  p.sequences = opt.counts.sequences;
  p.pass = pass_for(p);
  return p;
}

/// Whether the aggregation needs N_tokens (token-mean) or B_nonempty (the sequence means)
/// before the first coefficient, and the caller did not give it.
template <class T>
bool needs_tokens(const plan<T>& p) {
  return p.aggregation_mode == aggregation::token_mean && p.tokens < 0;
}
template <class T>
bool needs_sequences(const plan<T>& p) {
  return p.aggregation_mode != aggregation::token_mean && uses_batch_count(p.aggregation_mode) &&
         p.sequences < 0;
}

/// beta * a_{b,t} for a sequence with n_b valid tokens, in T, saturated at T's largest
/// finite value: beta=1e308 in float, or agg-norm=1e-300 with beta=1e10 in double, must not
/// give an inf whose product with a masked token's 0 (or with k'(0) = 0) is NaN. The
/// products after it saturate where they can exceed max (coefficient.hpp, fused_pass()).
template <class T>
T token_scale(const plan<T>& p, Index n_b) {
  return T(std::min(p.beta * aggregation_weight(p.aggregation_mode, p.constants, n_b, p.tokens,
                                                p.sequences),
                    double(std::numeric_limits<T>::max())));
}

}  // namespace klgrad::detail
