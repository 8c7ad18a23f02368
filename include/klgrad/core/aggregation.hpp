// How per-token losses are averaged over a batch, and the counts a data-parallel trainer
// passes so that shards add up to the unsharded result.
#pragma once

#include "../support/errors.hpp"
#include "../support/names.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

namespace klgrad {

/// The weight a_{b,t} of a valid token in the batch loss beta * sum a_{b,t} v_{b,t}, before
/// the constants of aggregation_constants (epsilons and scale).
enum class aggregation {
  token_mean,               ///< 1 / N_tokens
  token_sum,                ///< 1
  seq_mean_token_sum,       ///< 1 / B_nonempty
  seq_mean_token_mean,      ///< 1 / (B_nonempty * n_b)
  seq_mean_token_sum_norm,  ///< 1 / (B_nonempty * L), L a fixed constant (Dr. GRPO, verl)
  token_sum_norm            ///< 1 / L, L a fixed constant (ROLL's seq-mean-token-sum-norm)
};

/// Each aggregation's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<aggregation> aggregation_names[] = {
    {aggregation::token_mean, "token-mean"},
    {aggregation::token_sum, "token-sum"},
    {aggregation::token_sum_norm, "token-sum-norm"},
    {aggregation::seq_mean_token_sum, "seq-mean-token-sum"},
    {aggregation::seq_mean_token_mean, "seq-mean-token-mean"},
    {aggregation::seq_mean_token_sum_norm, "seq-mean-token-sum-norm"}};

inline constexpr auto all_aggregations = detail::values_in(aggregation_names);

inline constexpr std::string_view to_string(aggregation x) {
  return detail::name_in(aggregation_names, x);
}

/// Whether the mode divides by the fixed length L (spec key agg-norm).
inline constexpr bool uses_norm(aggregation a) {
  return a == aggregation::seq_mean_token_sum_norm || a == aggregation::token_sum_norm;
}

/// Whether the mode divides by a batch count, N_tokens or B (spec key agg-eps).
inline constexpr bool uses_batch_count(aggregation a) {
  return a != aggregation::token_sum && a != aggregation::token_sum_norm;
}

/// Whether the mode divides by the sequence's own token count n_b (spec key agg-seq-eps).
inline constexpr bool uses_sequence_count(aggregation a) {
  return a == aggregation::seq_mean_token_mean;
}

/// The constants of an aggregation besides its mode, as trainers write their denominators:
///   a_{b,t} = scale / (N_tokens + eps)                      token-mean
///           = scale                                         token-sum
///           = scale / L                                     token-sum-norm
///           = scale / (B + eps)                             seq-mean-token-sum
///           = scale / ((B + eps) * (n_b + seq_eps))         seq-mean-token-mean
///           = scale / ((B + eps) * L)                       seq-mean-token-sum-norm
/// eps and seq_eps are the "+ 1e-8" of a masked mean (docs/presets.md lists who adds one
/// where); scale is a constant factor on the aggregated loss, such as the data-parallel size
/// verl multiplies by because DDP then averages the ranks' gradients, or TRL's
/// 1 / gradient_accumulation_steps.
struct aggregation_constants {
  double norm = 0.0;     ///< L of the -norm modes (0 when unused)
  double eps = 0.0;      ///< added to the batch count the mode divides by (N_tokens or B)
  double seq_eps = 0.0;  ///< added to n_b (seq-mean-token-mean)
  double scale = 1.0;    ///< constant factor

  friend bool operator==(const aggregation_constants& a, const aggregation_constants& b) {
    return a.norm == b.norm && a.eps == b.eps && a.seq_eps == b.seq_eps && a.scale == b.scale;
  }
  friend bool operator!=(const aggregation_constants& a, const aggregation_constants& b) {
    return !(a == b);
  }
};

namespace detail {

/// How a caller names the aggregation settings in its messages, each name ending where the
/// value follows: {"agg=", "agg-norm=", ...} for a spec, {"aggregation=",
/// "aggregation_constants.norm=", ...} for logits_options.
struct aggregation_names {
  const char* mode;
  const char* norm;
  const char* eps;
  const char* seq_eps;
  const char* scale;
};

/// Why the constants k cannot serve mode (each finite; norm > 0 exactly for the -norm
/// modes; eps >= 0, and nonzero only for a mode that divides by a batch count; seq_eps >= 0,
/// and nonzero only for seq-mean-token-mean; scale > 0), named by `n`; empty when they can.
inline std::string aggregation_problem(aggregation mode, const aggregation_constants& k,
                                       const aggregation_names& n) {
  const auto agg = [&] { return cat(n.mode, to_string(mode)); };  // no allocation unless bad
  for (const auto& [name, value] : {std::pair{n.norm, k.norm}, std::pair{n.eps, k.eps},
                                    std::pair{n.seq_eps, k.seq_eps}, std::pair{n.scale, k.scale}})
    if (std::isinf(value)) return cat(name, format_number(value), " must be finite");
  if (uses_norm(mode) && !(k.norm > 0.0))
    return cat(agg(), " needs ", n.norm, "L with L > 0 (the fixed length it divides by)");
  if (!uses_norm(mode) && k.norm != 0.0)
    return cat(n.norm, "L applies only to ", n.mode, "token-sum-norm and ", n.mode,
               "seq-mean-token-sum-norm, not ", agg());
  if (!(k.eps >= 0.0)) return cat(n.eps, format_number(k.eps), " must be >= 0");
  if (k.eps != 0.0 && !uses_batch_count(mode))
    return cat(n.eps, "E is added to the batch count a mode divides by (N_tokens or B); ", agg(),
               " divides by none: use it with token-mean, seq-mean-token-sum, "
               "seq-mean-token-mean or seq-mean-token-sum-norm");
  if (!(k.seq_eps >= 0.0)) return cat(n.seq_eps, format_number(k.seq_eps), " must be >= 0");
  if (k.seq_eps != 0.0 && !uses_sequence_count(mode))
    return cat(n.seq_eps, "E is added to a sequence's token count n_b, which only ", n.mode,
               "seq-mean-token-mean divides by, not ", agg());
  if (!(k.scale > 0.0))
    return cat(n.scale, format_number(k.scale), " must be > 0 (use beta=0 to switch the term off)");
  return {};
}

}  // namespace detail

/// Batch-wide counts. -1 means "count the local batch"; a data-parallel trainer passes the
/// global counts (all shards) so that summing the shards' losses and concatenating their
/// coefficients gives exactly the unsharded result. A global count covers every shard, this
/// one included, so it is at least the local count (0 only for a batch with no valid token,
/// whose coefficients are 0 whatever it divides by); anything else raises input_error.
struct batch_counts {
  Eigen::Index tokens = -1;     ///< N_tokens: valid tokens in the whole batch
  Eigen::Index sequences = -1;  ///< B: sequences with at least one valid token, or the
                                ///< trainer's own sequence count (docs/presets.md)
};

namespace detail {

/// Raises input_error (reason bad_count) unless each of the caller's counts is -1 or at least
/// the local batch's own (tokens valid tokens in sequences non-empty sequences). A smaller
/// global count would scale every coefficient up by local / global; a negative one used to
/// fall back silently.
inline void check_counts(const batch_counts& given, Eigen::Index tokens, Eigen::Index sequences) {
  auto check = [](const char* name, Eigen::Index count, Eigen::Index local, const char* what) {
    if (count == -1 || count >= local) return;
    input_error e(cat("batch_counts.", name, " = ", count, " must be -1 (count this batch) "
                      "or a global count of at least this batch's own ", local, " ", what,
                      " (a global count covers every shard, this one included)"),
                  input_reason::bad_count, cat("counts.", name));
    e.value = double(count);
    e.limit = double(local);
    raise(e);
  };
  check("tokens", given.tokens, tokens, "valid tokens");
  check("sequences", given.sequences, sequences, "non-empty sequences");
}

}  // namespace detail

/// a_{b,t} for a valid token of a sequence with n_b valid tokens, given the batch's
/// N_tokens and B and the mode's constants. Where the count a mode divides by is 0 the batch
/// (or, for seq-mean-token-mean, the sequence) has no valid token to weight, and a = 0: not
/// the 1/0 = inf whose product with a masked token's 0 is NaN. Saturates at the largest
/// double (agg-scale=1e308 with agg-norm=1e-300 is finite input).
inline double aggregation_weight(aggregation mode, const aggregation_constants& k,
                                 Eigen::Index n_b, Eigen::Index tokens, Eigen::Index sequences) {
  const Eigen::Index count = mode == aggregation::token_mean ? tokens : sequences;
  if ((uses_batch_count(mode) && count == 0) || (uses_sequence_count(mode) && n_b == 0))
    return 0.0;
  const double B = double(sequences) + k.eps;
  double a = 0.0;
  switch (mode) {
    case aggregation::token_mean: a = 1.0 / (double(tokens) + k.eps); break;
    case aggregation::token_sum: a = 1.0; break;
    case aggregation::token_sum_norm: a = 1.0 / k.norm; break;
    case aggregation::seq_mean_token_sum: a = 1.0 / B; break;
    case aggregation::seq_mean_token_mean: a = 1.0 / (B * (double(n_b) + k.seq_eps)); break;
    case aggregation::seq_mean_token_sum_norm: a = 1.0 / (B * k.norm); break;
  }
  return std::min(k.scale * a, std::numeric_limits<double>::max());
}

}  // namespace klgrad
