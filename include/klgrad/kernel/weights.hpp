// Importance weights in the kernel: the log weight of each token at its level (token, prefix,
// per-decision, sequence-mean), guarded, then the weight a token uses (after is-clip and
// is-mask) and its derivative d used / d lp.
#pragma once

#include "chunk.hpp"

namespace klgrad::detail {

/// The running state of a sequence's weights: the prefix log weight so far and the
/// sequence-mean log weight.
template <class T>
struct weight_state {
  T carry = 0;
  T sequence = 0;
};

/// The sequence-mean log weight mean_t (lp_t - lb_t) over valid tokens (each guarded as a
/// token's log weight), guarded itself; adds 1 to `guarded` when the mean was clamped.
template <class T, class M>
T sequence_log_weight(const sequence_view<T, M>& q, Index n_b, const plan<T>& p, Index& guarded) {
  const T bound = p.log_bound;
  double sum = 0;
  for (Index i = 0; i < q.size; ++i) {
    if (!valid_at(q.mask, i)) continue;
    const T d = q.logp[i] - q.behavior[i];
    sum += double(d < -bound ? -bound : (d > bound ? bound : d));
  }
  const T mean = T(sum / double(n_b));
  if (mean < -bound || mean > bound) {
    ++guarded;
    return mean < -bound ? -bound : bound;
  }
  return mean;
}

/// The weights of a filled chunk (positions i0 .. i0+n-1, log-ratios and valid flags in
/// place): c.used and c.grad. Adds the tokens whose log weight was guarded to `guarded` and
/// the band-dropped ones to `dropped`; raises for a non-finite input under
/// nonfinite_policy::raise (`nonfinite`: the log-ratio pass saw one).
template <class T, class M>
void token_weights(chunk<T>& c, const sequence_view<T, M>& q, Index i0, Index n,
                   const plan<T>& p, bool nonfinite, Index& guarded, Index& dropped,
                   weight_state<T>& ws) {
  // Log weights, reusing `grad` for log w until the weights are known.
  const T* lp = q.logp + i0;
  const T* lb = q.behavior + i0;
  T* lw = c.grad;
  const T bound = p.log_bound;
  for (Index i = 0; i < n; ++i) {
    const bool m = c.valid[i] != T(0);
    const T d = m ? lp[i] - lb[i] : T(0);
    nonfinite |= m & (lb[i] - lb[i] != T(0));
    guarded += (d < -bound) | (d > bound);
    lw[i] = d < -bound ? -bound : (d > bound ? bound : d);
  }
  if (p.nonfinite == nonfinite_policy::raise && nonfinite) find_nonfinite(q, i0, n);
  if (p.weights == weight_level::prefix || p.weights == weight_level::per_decision) {
    // log W_{1:t}: the running sum over valid tokens, guarded like a token's log weight.
    T carry = ws.carry;
    for (Index i = 0; i < n; ++i) {
      if (c.valid[i] == T(0)) {
        lw[i] = T(0);
        continue;
      }
      carry += lw[i];
      guarded += (carry < -bound) | (carry > bound);
      lw[i] = carry < -bound ? -bound : (carry > bound ? bound : carry);
    }
    ws.carry = carry;
  } else if (p.weights == weight_level::sequence_mean) {
    std::fill(lw, lw + n, ws.sequence);
  }
  c.m(c.used) = c.m(lw).exp();
  const bool differentiable = p.mode == weighting::differentiable;
  const T clip = p.clip, log_clip = p.log_clip, log_lo = p.log_lo, log_hi = p.log_hi;
  Index drops = 0;
  for (Index i = 0; i < n; ++i) {
    const bool drop = (lw[i] < log_lo) | (lw[i] > log_hi);
    const bool truncated = lw[i] > log_clip;
    const T w = c.used[i];
    drops += drop & (c.valid[i] != T(0));
    c.used[i] = drop ? T(0) : (truncated ? clip : w);
    c.grad[i] = (drop | truncated | !differentiable) ? T(0) : w;
  }
  if (p.detach) c.m(c.grad) *= c.m(c.inside);
  dropped += drops;
}

}  // namespace klgrad::detail
