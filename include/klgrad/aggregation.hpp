// How per-token losses are averaged over a batch, and the counts a data-parallel trainer
// passes so that shards add up to the unsharded result.
#pragma once

#include "errors.hpp"

#include <Eigen/Core>
#include <string_view>

namespace klgrad {

/// The weight a_{b,t} of a valid token in the batch loss beta * sum a_{b,t} v_{b,t}.
enum class aggregation {
  token_mean,              ///< 1 / N_tokens
  token_sum,               ///< 1
  seq_mean_token_sum,      ///< 1 / B_nonempty
  seq_mean_token_mean,     ///< 1 / (B_nonempty * n_b)
  seq_mean_token_sum_norm  ///< 1 / (B_nonempty * L), L a fixed constant (Dr. GRPO)
};

inline constexpr aggregation all_aggregations[] = {
    aggregation::token_mean, aggregation::token_sum, aggregation::seq_mean_token_sum,
    aggregation::seq_mean_token_mean, aggregation::seq_mean_token_sum_norm};

inline constexpr std::string_view to_string(aggregation a) {
  switch (a) {
    case aggregation::token_mean: return "token-mean";
    case aggregation::token_sum: return "token-sum";
    case aggregation::seq_mean_token_sum: return "seq-mean-token-sum";
    case aggregation::seq_mean_token_mean: return "seq-mean-token-mean";
    case aggregation::seq_mean_token_sum_norm: return "seq-mean-token-sum-norm";
  }
  return "?";
}

/// Batch-wide counts. A negative entry means "count the local batch"; a data-parallel
/// trainer passes the global counts (all shards) so that summing the shards' losses and
/// concatenating their coefficients gives exactly the unsharded result.
struct batch_counts {
  Eigen::Index tokens = -1;     ///< N_tokens: valid tokens in the whole batch
  Eigen::Index sequences = -1;  ///< B_nonempty: sequences with at least one valid token
};

/// a_{b,t} for a valid token of a sequence with n_b valid tokens, given the batch's
/// N_tokens and B_nonempty and the constant L of seq_mean_token_sum_norm.
inline double aggregation_weight(aggregation mode, double norm, Eigen::Index n_b,
                                 Eigen::Index tokens, Eigen::Index sequences) {
  switch (mode) {
    case aggregation::token_mean: return 1.0 / double(tokens);
    case aggregation::token_sum: return 1.0;
    case aggregation::seq_mean_token_sum: return 1.0 / double(sequences);
    case aggregation::seq_mean_token_mean: return 1.0 / (double(sequences) * double(n_b));
    case aggregation::seq_mean_token_sum_norm: return 1.0 / (double(sequences) * norm);
  }
  return 0.0;
}

}  // namespace klgrad
