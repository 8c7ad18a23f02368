// Synthetic inputs for throughput measurements: a cheap deterministic generator (the values
// only need to be ordinary log-probabilities and logits, not random in any deeper sense) and
// the split of a batch's sequences or rows between threads.
#pragma once

#include "settings.hpp"

#include <cstdint>
#include <utility>

namespace klgrad::bench::detail {

/// Uniform numbers in [0, 1) from a linear congruential generator with a fixed seed.
class uniform {
 public:
  double operator()() {
    state_ = state_ * 1664525u + 1013904223u;
    return double(state_ >> 8) / double(1u << 24);
  }

 private:
  std::uint32_t state_ = 12345;
};

/// Fills n elements of x with lo + (hi - lo) u, u uniform in [0, 1).
template <class S>
void fill_uniform(S* x, Index n, double lo, double hi, uniform& u) {
  for (Index i = 0; i < n; ++i) x[i] = S(float(lo + (hi - lo) * u()));
}

/// Items [first, last) of slice i of `slices` near-equal slices of n items (sequences, rows).
inline std::pair<Index, Index> slice_of(Index n, int i, int slices) {
  return {n * i / slices, n * (i + 1) / slices};
}

}  // namespace klgrad::bench::detail
