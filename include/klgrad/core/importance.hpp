// Importance weights against a behaviour policy, as a spec names them: per token, per prefix,
// per decision or per sequence; none, detached or differentiable; with truncation and band
// masking. The kernel computes them in kernel/weights.hpp, in log space.
#pragma once

#include "../support/names.hpp"

#include <limits>
#include <string_view>

namespace klgrad {

/// How the importance weight enters the surrogate loss of a token:
///  none:           L = [reward] sg(R) lp + [loss] A
///  detached:       L = sg(w) ([reward] sg(R) lp + [loss] A)
///  differentiable: L = w ([reward] sg(R) + [loss] A)     (w = exp(lp - lb) carries gradient)
/// where R is the in-reward penalty and A the as-loss term.
enum class weighting { none, detached, differentiable };

/// Each weighting's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<weighting> weighting_names[] = {
    {weighting::none, "none"},
    {weighting::detached, "detached"},
    {weighting::differentiable, "differentiable"}};

inline constexpr auto all_weightings = detail::values_in(weighting_names);

inline constexpr std::string_view to_string(weighting x) {
  return detail::name_in(weighting_names, x);
}

/// Which product of token ratios w_t = exp(lp_t - lb_t) weighs token t (spec key is-level).
/// Sums and products run over the valid tokens of one sequence, in log space:
///
///  token:         u_t = w_t.
///  prefix:        u_t = W_{1:t} = prod_{j<=t} w_j = exp(sum_{j<=t} log w_j): the probability
///                 ratio of the prefix y_{1:t}, which makes E_mu[u_t f(y_{1:t})] = E_pi[f].
///                 Differentiable, d u_t / d lp_j = u_t for every j <= t, so the weight's
///                 gradient reaches every earlier token: c_j gets sum_{t>=j} u_t X_t.
///  per-decision:  the coefficient c_t = sum_{t'>=t} gamma^(t'-t) W_{1:t'} b_{t'}, with
///                 b_t = k_a(s_t) the in-reward penalty: the whole sequence-level gradient
///                 off-policy (unbiased with k1 and gamma = 1; derivation in
///                 docs/importance.md). The weights are detached, the placement in-reward,
///                 the level token.
///  sequence-mean: u_t = w_seq = exp(mean_t (lp_t - lb_t)) for every token of the sequence
///                 (n_b valid tokens; GSPO's and TRL's sequence-level ratio). Differentiable,
///                 d w_seq / d lp_j = w_seq / n_b for every valid j.
///
/// is-clip (u -> min(u, C), no gradient where active) and is-mask (u outside [LO, HI]
/// drops the token) act on u_t, the weight actually used. Variance: a product of T ratios
/// has log-variance growing linearly in T, so prefix and per-decision weights of long
/// sequences are heavy-tailed; clip them (docs/importance.md).
enum class weight_level { token, prefix, per_decision, sequence_mean };

/// Each weight level's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<weight_level> weight_level_names[] = {
    {weight_level::token, "token"},
    {weight_level::prefix, "prefix"},
    {weight_level::per_decision, "per-decision"},
    {weight_level::sequence_mean, "sequence-mean"}};

inline constexpr auto all_weight_levels = detail::values_in(weight_level_names);

inline constexpr std::string_view to_string(weight_level x) {
  return detail::name_in(weight_level_names, x);
}

/// The importance-weighting settings of a spec.
struct importance {
  weighting mode = weighting::none;
  weight_level level = weight_level::token;
  /// Truncation: the weight used is min(w, clip); +inf means no truncation. Where the
  /// truncation is active the weight is a constant (no gradient through it).
  double clip = std::numeric_limits<double>::infinity();
  /// Band mask: a token whose w lies outside [mask_lo, mask_hi] is dropped (weight 0).
  /// It keeps its place in the aggregation's counts, as a rejected sample does.
  double mask_lo = 0.0;
  double mask_hi = std::numeric_limits<double>::infinity();

  bool active() const { return mode != weighting::none; }
  bool truncated() const { return clip < std::numeric_limits<double>::infinity(); }
  bool masked() const {
    return mask_lo > 0.0 || mask_hi < std::numeric_limits<double>::infinity();
  }
  friend bool operator==(const importance& a, const importance& b) {
    return a.mode == b.mode && a.level == b.level && a.clip == b.clip && a.mask_lo == b.mask_lo &&
           a.mask_hi == b.mask_hi;
  }
};

}  // namespace klgrad
