// The discounted sum over the valid tokens of one sequence that the to-go level, the
// per-decision weights and discounted returns share.
#pragma once

#include "../views/batch.hpp"

namespace klgrad {

namespace detail {

/// The sum of level::to_go over the valid tokens of one sequence (mask nullptr: every token
/// valid): x_t <- sum_{t'>=t} gamma^(t'-t) x_t', gamma counting valid tokens, saturated to
/// stay finite. Masked entries are left as they are.
template <class T, class M>
void sum_to_go(const M* mask, Index size, T* x, T gamma) {
  T running = 0;
  for (Index t = size - 1; t >= 0; --t) {
    if (!valid_at(mask, t)) continue;
    running = saturated(x[t] + gamma * running);
    x[t] = running;
  }
}

}  // namespace detail

}  // namespace klgrad
