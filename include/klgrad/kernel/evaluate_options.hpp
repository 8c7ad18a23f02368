// What an evaluate() call takes besides the spec and the batch (options), and what it returns
// besides the per-token arrays (summary).
#pragma once

#include "../core/aggregation.hpp"

#include <Eigen/Core>

namespace klgrad {

using Eigen::Index;

/// What to do with a non-finite log-probability in a valid (unmasked) token.
enum class nonfinite_policy {
  raise,     ///< raise input_error naming the argument, the position and the value (default)
  propagate  ///< compute anyway: NaN and inf flow into that token's (and its level's) results
};

/// Per-call settings that are not part of the spec.
struct options {
  batch_counts counts;  ///< global N_tokens / B_nonempty for data-parallel shards
  nonfinite_policy nonfinite = nonfinite_policy::raise;
};

/// What evaluate() returns besides the per-token arrays.
struct summary {
  double loss = 0;         ///< beta * sum a_{b,t} v_{b,t}: this batch's share of the loss
  double kl = 0;           ///< mean value per valid token
  double kl_sequence = 0;  ///< mean over non-empty sequences of the sequence's summed value
  Index tokens = 0;        ///< valid tokens in this batch
  Index sequences = 0;     ///< non-empty sequences in this batch
  Index guarded = 0;       ///< tokens whose log-ratio or log-weight was clamped to stay finite
  Index dropped = 0;       ///< tokens dropped by the is-mask band
};

}  // namespace klgrad
