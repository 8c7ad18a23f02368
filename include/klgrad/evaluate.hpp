// The batch kernel: for every token of a padded or packed batch, the value a spec logs and
// the coefficient d(loss)/d(log pi) a trainer back-propagates, plus a summary.
#pragma once

#include "aggregation.hpp"
#include "batch.hpp"
#include "clamp.hpp"
#include "errors.hpp"
#include "estimators.hpp"
#include "importance.hpp"
#include "score_function.hpp"
#include "spec.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace klgrad {

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

namespace detail {

inline constexpr Index chunk_size = 256;

/// Per-token quantities of one chunk, computed once and shared by every level.
template <class T>
struct chunk {
  using array = Eigen::Array<T, Eigen::Dynamic, 1>;
  using map = Eigen::Map<array>;
  alignas(64) T lanes[chunk_size];  ///< a packet mask: all bits set for a valid token, else 0
  alignas(64) T valid[chunk_size];  ///< 1 for a valid token, 0 for a masked one
  alignas(64) T s[chunk_size];      ///< guarded log-ratio, 0 where masked
  alignas(64) T va[chunk_size];     ///< value estimator k_a(s)
  alignas(64) T gb[chunk_size];     ///< gradient estimator's derivative k_b'(s)
  alignas(64) T used[chunk_size];   ///< weight multiplying the token (1 without weights)
  alignas(64) T grad[chunk_size];   ///< d(used)/d(lp) (differentiable, not truncated)
  alignas(64) T scratch[chunk_size];  ///< weighted values, sums, copies
  alignas(64) T inside[chunk_size];   ///< 1 where the clamp's log-ratio bound let s through
                                      ///< (everywhere without a clamp)
  Index n = 0;
  map m(T* p) { return map(p, n); }
};

/// Settings of one evaluate() call, resolved once.
template <class T>
struct plan {
  const spec* s;
  nonfinite_policy nonfinite;
  T lowest, highest;       ///< guard on the log-ratio for the estimators in use
  T log_bound;             ///< guard on log weights
  T log_clip, clip;        ///< truncation (log C = +inf when off)
  T log_lo, log_hi;        ///< band mask in log space
  Index tokens = 0, sequences = 0;  ///< N_tokens and B_nonempty used by the aggregation
  bool clamp_a = false, clamp_b = false;  ///< the clamp policy acts on k_a / k_b
  bool detach = false;                    ///< detach the weight where the log bound is active
};

/// The running state of a sequence's weights: the prefix log weight so far and the
/// sequence-mean log weight.
template <class T>
struct weight_state {
  T carry = 0;
  T sequence = 0;
};

template <class T>
[[noreturn]] void report_nonfinite(const char* name, Index row, Index position, Index flat, T v) {
  input_error e(cat(name, " at sequence ", row, ", position ", position, " (flat token ", flat,
                    ") is ", v,
                    ", not finite, in an unmasked token; mask it out, or pass "
                    "nonfinite_policy::propagate to compute anyway"),
                input_reason::nonfinite, name);
  e.sequence = row;
  e.position = position;
  e.flat = flat;
  e.value = double(v);
  raise(e);
}

/// Raises for the first non-finite input among positions i0 .. i0+n-1. Returns when there
/// is none: the vector probe also fires when the difference of two finite log-probs
/// overflows, which the guard then clamps.
template <class T, class M>
void find_nonfinite(const sequence_view<T, M>& q, Index i0, Index n) {
  for (Index i = i0; i < i0 + n; ++i) {
    if (q.mask && q.mask[i] == M(0)) continue;
    if (!std::isfinite(q.logp[i])) report_nonfinite("logp", q.row, i, q.first + i, q.logp[i]);
    if (!std::isfinite(q.ref[i])) report_nonfinite("ref", q.row, i, q.first + i, q.ref[i]);
    if (q.behavior && !std::isfinite(q.behavior[i]))
      report_nonfinite("behavior", q.row, i, q.first + i, q.behavior[i]);
  }
}

/// The valid tokens of a sequence. Counts blocks into a 32-bit total, which compilers
/// vectorise over a byte mask four times wider than a 64-bit one.
template <class T, class M>
Index count_valid(const sequence_view<T, M>& q) {
  if (!q.mask) return q.size;
  constexpr Index block = Index(1) << 20;
  Index n = 0;
  for (Index i0 = 0; i0 < q.size; i0 += block) {
    const M* m = q.mask + i0;
    const Index size = std::min(block, q.size - i0);
    std::uint32_t in_block = 0;
    for (Index i = 0; i < size; ++i) in_block += m[i] != M(0);
    n += in_block;
  }
  return n;
}

template <class T, class M>
bool any_valid(const sequence_view<T, M>& q) {
  if (!q.mask) return q.size > 0;
  for (Index i = 0; i < q.size; ++i)
    if (q.mask[i] != M(0)) return true;
  return false;
}

/// x clamped to [-max, max]; NaN stays NaN. Keeps sums and products finite.
template <class T>
T saturated(T x) {
  const T top = std::numeric_limits<T>::max();
  return x > top ? top : (x < -top ? -top : x);
}

/// saturated() over an array.
template <class T>
void saturate(T* x, Index n) {
  for (Index i = 0; i < n; ++i) x[i] = saturated(x[i]);
}

/// The sum of a chunk's x in double, saturated: the vectorised sum in T, or, where that
/// overflowed (partial sums of +-max reach +inf and -inf, whose sum is NaN), a running sum
/// that saturates at every step. NaN stays NaN.
template <class T>
double saturated_sum(chunk<T>& c, T* x) {
  const double fast = double(c.m(x).sum());
  if (std::isfinite(fast)) return fast;
  double sum = 0;
  for (Index i = 0; i < c.n; ++i) sum = saturated(sum + double(x[i]));
  return sum;
}

/// The weighted values of a chunk (used * k_a), summed. The chunk buffers always sit at the
/// same alignment, so Eigen's vectorised sum adds in the same order whatever the layout of
/// the caller's arrays: shards reproduce the unsharded sums.
template <class T>
double weighted_values(chunk<T>& c) {
  c.m(c.scratch) = c.m(c.used) * c.m(c.va);
  return saturated_sum(c, c.scratch);
}

/// The sequence-mean log weight mean_t (lp_t - lb_t) over valid tokens (each guarded as a
/// token's log weight), guarded itself; adds 1 to `guarded` when the mean was clamped.
template <class T, class M>
T sequence_log_weight(const sequence_view<T, M>& q, Index n_b, const plan<T>& p, Index& guarded) {
  const T bound = p.log_bound;
  double sum = 0;
  for (Index i = 0; i < q.size; ++i) {
    if (q.mask && q.mask[i] == M(0)) continue;
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

/// The unsigned integer of T's size (for bit masks).
template <class T>
using unsigned_of = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

/// The packet type of T on this build, and its width.
template <class T>
using packet = typename Eigen::internal::packet_traits<T>::type;
template <class T>
inline constexpr Index packet_width = Eigen::internal::unpacket_traits<packet<T>>::size;

/// What log_ratio_packets() found in a chunk besides the log-ratios.
template <class T>
struct chunk_checks {
  Index valid = 0;         ///< valid tokens in the chunk
  Index guarded = 0;       ///< valid tokens whose log-ratio the guard clamped
  bool nonfinite = false;  ///< some valid token may hold a non-finite lp or ref
  T sum = 0;               ///< the sum of the packets the body returned
};

/// Whether a packet handed to a body lies wholly inside the chunk (a full packet) or is the
/// last, partial one; bodies that store to the caller's arrays store only its first lanes.
using full_packet = std::true_type;
using partial_packet = std::false_type;

/// The one pass over a chunk's inputs that every token-level path starts with: converts the
/// mask into the bit masks c.lanes, then, packet by packet, forms the guarded log-ratio
/// s = clamp(lp - lr, lowest, highest) (0 where masked; NaN stays NaN) and hands
/// body(k, s, valid_bits, full_packet or partial_packet) the packet at chunk offset k,
/// valid_bits all-ones in valid lanes; the packets body returns are summed into `sum`. The
/// last partial packet reads zero-padded copies, so that every lane computes the same
/// formulas. Detects guarded and non-finite log-ratios on the way, and counts them only in a
/// chunk that has some. Always inlined, so that the body's captures live in registers.
template <class T, class M, class Body>
EIGEN_ALWAYS_INLINE chunk_checks<T> log_ratio_packets(chunk<T>& c, const sequence_view<T, M>& q,
                                                      Index i0, Index n, const plan<T>& p,
                                                      Body&& body) {
  using namespace Eigen::internal;
  using P = packet<T>;
  constexpr Index W = packet_width<T>;
  c.n = n;
  chunk_checks<T> out;
  const T all_bits = Eigen::numext::bit_cast<T>(~unsigned_of<T>(0));
  if (q.mask) {
    const M* mk = q.mask + i0;
    std::uint32_t count = 0;
    for (Index i = 0; i < n; ++i) {
      const bool valid = mk[i] != M(0);
      c.lanes[i] = valid ? all_bits : T(0);
      count += valid;
    }
    out.valid = count;
  } else {
    std::fill(c.lanes, c.lanes + n, all_bits);
    out.valid = n;
  }
  const T* lp = q.logp + i0;
  const T* lr = q.ref + i0;
  const P lo = pset1<P>(p.lowest), hi = pset1<P>(p.highest), zero = pset1<P>(T(0));
  P excess = zero, sum = zero;
  // d - s is +0 unless the guard clamped d (then at least an ulp of the bound) or d is not
  // finite (then inf or NaN): the bits of excess stay 0 exactly when neither happened.
  auto one = [&](Index k, const P& a, const P& b, auto whole) {
    const P valid = pload<P>(c.lanes + k);
    const P d = pand(psub(a, b), valid);
    const P s = pmin(pmax(d, lo), hi);
    excess = por(excess, psub(d, s));
    sum = padd(sum, body(k, s, valid, whole));
  };
  Index k = 0;
  for (; k + W <= n; k += W) one(k, ploadu<P>(lp + k), ploadu<P>(lr + k), full_packet{});
  if (k < n) {
    alignas(64) T lp_tail[std::size_t(W)] = {}, lr_tail[std::size_t(W)] = {};
    std::copy(lp + k, lp + n, lp_tail);
    std::copy(lr + k, lr + n, lr_tail);
    std::fill(c.lanes + n, c.lanes + k + W, T(0));
    one(k, pload<P>(lp_tail), pload<P>(lr_tail), partial_packet{});
  }
  out.sum = predux(sum);
  alignas(64) T excess_lanes[std::size_t(W)];
  pstore(excess_lanes, excess);
  auto has_bits = [](T x) { return Eigen::numext::bit_cast<unsigned_of<T>>(x) != 0; };
  if (std::any_of(excess_lanes, excess_lanes + W, has_bits)) {
    // rare: count the guarded tokens one by one
    for (Index i = 0; i < n; ++i) {
      if (q.mask && q.mask[i0 + i] == M(0)) continue;
      const T d = lp[i] - lr[i];
      out.guarded += (d < p.lowest) | (d > p.highest);
      out.nonfinite |= !(d - d == T(0));
    }
  }
  return out;
}

/// k_a(s) and k_b'(s) of a packet; one shared evaluation when a and b are the same
/// estimator (k3's argument reduction serves both).
template <class Ea, class Eb, class P>
void value_and_gradient(const P& s, P& value, P& gradient) {
  if constexpr (std::is_same_v<Ea, Eb>) {
    Ea::packet_both(s, value, gradient);
  } else {
    value = Ea::packet_value(s);
    gradient = Eb::packet_derivative(s);
  }
}

/// value_and_gradient() under the spec's clamp: each estimator the policy acts on is clamped
/// (clamp_packet); `inside` gets all bits where the log-ratio bound let s through (every
/// lane when the policy acts on neither estimator).
template <class Ea, class Eb, class T, class P>
EIGEN_ALWAYS_INLINE void clamped_value_and_gradient(const plan<T>& p, const packet_bounds<T>& b,
                                                    const P& s, P& value, P& gradient,
                                                    P& inside) {
  using namespace Eigen::internal;
  if (!p.clamp_a && !p.clamp_b) {
    value_and_gradient<Ea, Eb>(s, value, gradient);
    inside = ptrue(s);
    return;
  }
  if constexpr (std::is_same_v<Ea, Eb>) {  // then clamp_a == clamp_b
    clamp_packet<Ea>(b, s, value, gradient, inside);
  } else {
    P unused, inside_a = ptrue(s), inside_b = ptrue(s);
    if (p.clamp_a)
      clamp_packet<Ea>(b, s, value, unused, inside_a);
    else
      value = Ea::packet_value(s);
    if (p.clamp_b)
      clamp_packet<Eb>(b, s, unused, gradient, inside_b);
    else
      gradient = Eb::packet_derivative(s);
    inside = pand(inside_a, inside_b);
  }
}

/// Fills the chunk for positions i0 .. i0+n-1 of a sequence: mask, guarded log-ratio,
/// estimator value and derivative, weights. Returns how many tokens a guard clamped and
/// adds the band-dropped tokens to `dropped`.
template <class Ea, class Eb, class T, class M>
Index fill(chunk<T>& c, const sequence_view<T, M>& q, Index i0, Index n, const plan<T>& p,
           Index& dropped, weight_state<T>& ws) {
  using namespace Eigen::internal;
  using P = packet<T>;
  const packet_bounds<T> bounds(p.s->clamp);
  const P one = pset1<P>(T(1));
  const auto checks = log_ratio_packets(c, q, i0, n, p, [&](Index k, const P& s, const P& valid, auto) {
    pstore(c.valid + k, pand(valid, one));
    pstore(c.s + k, s);
    P v, g, inside;
    clamped_value_and_gradient<Ea, Eb>(p, bounds, s, v, g, inside);
    pstore(c.inside + k, pand(inside, one));
    pstore(c.va + k, v);
    pstore(c.gb + k, g);
    return pset1<P>(T(0));
  });
  Index guarded = checks.guarded;
  bool nonfinite = checks.nonfinite;
  const T* lp = q.logp + i0;
  const importance& is = p.s->importance;
  if (!is.active()) {
    if (p.nonfinite == nonfinite_policy::raise && nonfinite) find_nonfinite(q, i0, n);
    return guarded;
  }
  // Log weights, reusing `grad` for log w until the weights are known.
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
  if (is.level == weight_level::prefix || is.level == weight_level::per_decision) {
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
  } else if (is.level == weight_level::sequence_mean) {
    std::fill(lw, lw + n, ws.sequence);
  }
  c.m(c.used) = c.m(lw).exp();
  const bool differentiable = is.mode == weighting::differentiable;
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
  return guarded;
}

/// Writes coef = scale * x, saturated. x, the unscaled coefficient, is finite at token level
/// (every term below max / e^2, the guards) but may overflow where a level sum meets a weight
/// (`sums`): it saturates first there, since the scale may be 0 (beta = 0) and 0 * inf is NaN.
/// The scale multiplies last, so that a huge scale times a huge weight never meets a 0 factor.
template <class T, class X>
void store_scaled(T* coef, Index n, const X& x, T scale, bool sums) {
  typename chunk<T>::map out(coef, n);
  if (sums) {
    out = x;
    saturate(coef, n);
    out *= scale;
  } else {
    out = scale * x;
  }
  if (sums || scale > T(1)) saturate(coef, n);
}

/// Writes coef = scale * valid * C, C the spec's adapt() (score_function.hpp) of R, the
/// in-reward penalty at the level, and A, D, the as-loss term's value and derivative at the
/// level (arrays over the chunk or constants broadcast over it), with the chunk's weights.
template <class T, class R, class A, class D>
void combine(chunk<T>& c, const plan<T>& p, const R& r, const A& a, const D& d, T scale,
             T* coef) {
  const bool sums = p.s->level != level::token;
  adapt(p.s->term.where, p.s->importance.mode, r, a, d, c.m(c.used), c.m(c.grad),
        [&](const auto& x) { store_scaled(coef, c.n, c.m(c.valid) * x, scale, sums); });
}

/// combine() for weights whose gradient reaches other tokens (prefix, sequence-mean):
/// wt holds, per token j, the weight-gradient part sum_t (d used_t / d lp_j) X_t of the
/// differentiable surrogate sum_t used_t X_t (X: weighted_quantity()), and
/// with_weight_gradient() adds the token's own [loss] used D.
/// Only is=differentiable comes here (detached weights use combine()).
template <class T, class W>
void combine_weight_gradient(chunk<T>& c, const plan<T>& p, const W& wt, T scale, T* coef) {
  with_weight_gradient(p.s->term.where, wt, c.m(c.gb), c.m(c.used), [&](const auto& x) {
    store_scaled(coef, c.n, c.m(c.valid) * x, scale, true);
  });
}

/// Backward sum over the valid tokens of a sequence: x_t <- sum_{t'>=t} gamma^(t'-t) x_t'
/// (gamma counting valid tokens), saturated to stay finite.
template <class T, class M>
void sum_to_go(const sequence_view<T, M>& q, T* x, T gamma) {
  T running = 0;
  for (Index t = q.size - 1; t >= 0; --t) {
    if (q.mask && q.mask[t] == M(0)) continue;
    running = saturated(x[t] + gamma * running);
    x[t] = running;
  }
}

/// The inputs of token_pass()'s coefficient as symbols for unweighted(): functors of the
/// packets (v, g) = (k_a(s), k_b'(s)), so that the placement's expression is chosen once per
/// sequence and inlined into the packet loop.
struct packet_value {
  template <class P>
  P operator()(const P& v, const P&) const { return v; }
};
struct packet_derivative {
  template <class P>
  P operator()(const P&, const P& g) const { return g; }
};
struct packet_value_plus_derivative {
  template <class P>
  P operator()(const P& v, const P& g) const { return Eigen::internal::padd(v, g); }
};
inline packet_value_plus_derivative operator+(packet_value, packet_derivative) { return {}; }

/// The token-level path without weights (the common case: k in reward, k as loss,
/// on-policy, with or without a clamp before the weight) in one pass: each packet of
/// log-ratios becomes value and coefficient,
///   value = k_a(s),  coef = scale * valid * unweighted(k_a(s), k_b'(s)),
/// (each clamped where the policy acts on it) stored straight into the caller's arrays
/// (combine() with weight 1, without the chunk buffers in between). Returns the summed
/// value; adds the guarded tokens to `guarded` and the valid ones to `valid_tokens`.
template <class Ea, class Eb, class T, class M>
double token_pass(const sequence_view<T, M>& q, T* value, T* coef, const plan<T>& p,
                  chunk<T>& c, T scale, Index& guarded, Index& valid_tokens) {
  using namespace Eigen::internal;
  using P = packet<T>;
  // Masked lanes have s = 0, where every value is 0 and so is every derivative but k1's.
  constexpr bool mask_gradient = !Eb::derivative_zero_at_zero;
  const packet_bounds<T> bounds(p.s->clamp);
  auto pass = [&](auto coefficient) {
    double total = 0.0;
    for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
      const Index n = std::min(chunk_size, q.size - i0);
      // Local copies, so that the compiler keeps the destinations in registers.
      T* const value_out = value + i0;
      T* const coef_out = coef + i0;
      const auto checks =
          log_ratio_packets(c, q, i0, n, p, [&](Index k, const P& s, const P& valid, auto whole) {
            P v, g, inside;
            clamped_value_and_gradient<Ea, Eb>(p, bounds, s, v, g, inside);
            P out = coefficient(v, g);
            if constexpr (mask_gradient) out = pand(out, valid);
            if constexpr (decltype(whole)::value) {
              pstoreu(value_out + k, v);
              pstoreu(coef_out + k, out);
            } else {
              pstore(c.va + k, v);
              pstore(c.scratch + k, out);
              std::copy(c.va + k, c.va + n, value_out + k);
              std::copy(c.scratch + k, c.scratch + n, coef_out + k);
            }
            return v;
          });
      if (p.nonfinite == nonfinite_policy::raise && checks.nonfinite) find_nonfinite(q, i0, n);
      guarded += checks.guarded;
      valid_tokens += checks.valid;
      total += double(checks.sum);
      if (scale > T(1)) saturate(coef + i0, n);
    }
    return total;
  };
  // The scale multiplies the coefficient last: with both parts, scale * v and scale * g may
  // overflow with opposite signs where their sum does not (k3-both, beta = 1e30).
  const P factor = pset1<P>(scale);
  return unweighted(p.s->term.where, packet_value{}, packet_derivative{}, [&](auto part) {
    return pass([&](const P& v, const P& g) { return pmul(factor, part(v, g)); });
  });
}

/// beta * a_{b,t} for a sequence with n_b valid tokens, in T, saturated at T's largest
/// finite value: beta=1e308 in float, or agg-norm=1e-300 with beta=1e10 in double, must not
/// give an inf whose product with a masked token's 0 (or with k'(0) = 0) is NaN. The
/// products after it saturate where they can exceed max (combine(), token_pass()).
template <class T>
T token_scale(const plan<T>& p, Index n_b) {
  const spec& s = *p.s;
  return T(std::min(s.beta * aggregation_weight(s, n_b, p.tokens, p.sequences),
                    double(std::numeric_limits<T>::max())));
}

/// Adds a sequence with n_b valid tokens and summed value `total` to the summary; returns
/// total, saturated (so that scale * total is never 0 * inf).
template <class T>
double account(summary& out, Index n_b, T scale, double total) {
  total = saturated(total);
  if (n_b == 0) return total;
  out.tokens += n_b;
  out.sequences += 1;
  out.loss = saturated(out.loss + double(scale) * total);
  return total;
}

/// Runs one sequence: writes its values and coefficients, returns its summed value.
template <class Ea, class Eb, class T, class M>
double run_sequence(const sequence_view<T, M>& q, T* value, T* coef, const plan<T>& p,
                    chunk<T>& c, summary& out) {
  const spec& s = *p.s;
  const importance& is = s.importance;
  const bool clamp_after_weight = s.clamp.after_weight && (p.clamp_a || p.clamp_b);
  if (s.level == level::token && !is.active() && !clamp_after_weight &&
      !uses_sequence_count(s.aggregation)) {
    // The common case in one pass that also counts the valid tokens, so that the mask is
    // read once (an empty sequence gets zeros: masked tokens have s = 0 and coefficient 0).
    const T scale = token_scale(p, 0);
    Index n_b = 0;
    const double total = token_pass<Ea, Eb>(q, value, coef, p, c, scale, out.guarded, n_b);
    return account(out, n_b, scale, total);
  }
  const Index n_b = count_valid(q);
  if (n_b == 0) {
    std::fill(value, value + q.size, T(0));
    std::fill(coef, coef + q.size, T(0));
    return 0.0;
  }
  const T scale = token_scale(p, n_b);
  auto scalar = [&](T x) { return chunk<T>::array::Constant(c.n, x); };
  using map = typename chunk<T>::map;
  const bool differentiable = is.mode == weighting::differentiable;
  weight_state<T> ws;
  if (is.level == weight_level::sequence_mean)
    ws.sequence = sequence_log_weight(q, n_b, p, out.guarded);
  double total = 0.0;
  Index ignored = 0;
  switch (s.level) {
    case level::token:
      if (s.clamp.after_weight && p.clamp_a) {
        // An as-loss term clamped after the weight: L = clamp(u k_a, lo, hi), whose
        // coefficient is adapt()'s times band = [lo <= u k_a <= hi]; adapt() is linear in
        // its parts, so the band multiplies them.
        const T lo = T(s.clamp.value_lo), hi = T(s.clamp.value_hi);
        const bool pass = s.clamp.pass_gradient;
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
          T* const band = c.inside;  // fill() is done with it
          for (Index i = 0; i < n; ++i) {
            const T x = c.used[i] * c.va[i];
            band[i] = pass || (lo <= x && x <= hi) ? T(1) : T(0);
            c.scratch[i] = c.valid[i] * (x < lo ? lo : (x > hi ? hi : x));
          }
          total += double(c.m(c.scratch).sum());
          map(value + i0, n) = c.m(c.scratch);
          const auto kept = c.m(band) * c.m(c.va);
          combine(c, p, kept, kept, c.m(band) * c.m(c.gb), scale, coef + i0);
        }
      } else if (is.level == weight_level::per_decision) {
        // c_t = sum_{t'>=t} gamma^(t'-t) used_t' b_t', b = k_a: weighted penalties into
        // coef, then the discounted backward sum, then the scale.
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
          total += weighted_values(c);
          map(value + i0, n) = c.m(c.scratch);
          map(coef + i0, n) = c.m(c.valid) * c.m(c.scratch);
        }
        sum_to_go(q, coef, T(s.gamma));
        map(coef, q.size) *= scale;
        saturate(coef, q.size);
      } else if (differentiable && is.level == weight_level::prefix) {
        // Pass 1: grad_t X_t into coef (X: weighted_quantity() of R = A = k_a); pass 2: sum
        // to go, the weight-gradient part of every earlier token; pass 3: combine.
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
          total += weighted_values(c);
          map(value + i0, n) = c.m(c.scratch);
          weighted_quantity(s.term.where, c.m(c.va), c.m(c.va), [&](const auto& x) {
            map(coef + i0, n) = c.m(c.valid) * c.m(c.grad) * x;
          });
        }
        sum_to_go(q, coef, T(1));
        ws = weight_state<T>{};
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          fill<Ea, Eb>(c, q, i0, n, p, ignored, ws);
          c.m(c.scratch) = map(coef + i0, n);
          combine_weight_gradient(c, p, c.m(c.scratch), scale, coef + i0);
        }
      } else if (differentiable && is.level == weight_level::sequence_mean) {
        // d w_seq / d lp_j = w_seq / n_b: every token gets (grad / n_b) sum_t X_t.
        double penalty = 0.0;
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
          total += weighted_values(c);
          map(value + i0, n) = c.m(c.scratch);
          c.m(c.scratch) = c.m(c.valid) * c.m(c.va);
          penalty = saturated(penalty + saturated_sum(c, c.scratch));
        }
        const double top = double(std::numeric_limits<T>::max());
        const double x = weighted_quantity(s.term.where, penalty, penalty,
                                           [](double sum) { return sum; });
        const T share = T(std::clamp(x / double(n_b), -top, top));
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          fill<Ea, Eb>(c, q, i0, n, p, ignored, ws);
          combine_weight_gradient(c, p, c.m(c.grad) * share, scale, coef + i0);
        }
      } else {
        // Token weights, detached prefix or sequence-mean weights, clamps, or a mode that
        // divides by n_b (the rest took the fused pass above): the token's own weight
        // multiplies its terms.
        for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
          const Index n = std::min(chunk_size, q.size - i0);
          out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
          // Masked tokens have s = 0, and k(0) = 0 for every estimator.
          total += weighted_values(c);
          map(value + i0, n) = c.m(c.scratch);
          combine(c, p, c.m(c.va), c.m(c.va), c.m(c.gb), scale, coef + i0);
        }
      }
      break;
    case level::to_go: {
      // Pass 1: penalties k_a(s_t) into coef; pass 2: reward-to-go backwards over valid
      // tokens; pass 3: weights and scale.
      for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
        const Index n = std::min(chunk_size, q.size - i0);
        out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
        map(coef + i0, n) = c.m(c.valid) * c.m(c.va);
      }
      sum_to_go(q, coef, T(s.gamma));
      for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
        const Index n = std::min(chunk_size, q.size - i0);
        fill<Ea, Eb>(c, q, i0, n, p, ignored, ws);
        total += weighted_values(c);
        map(value + i0, n) = c.m(c.scratch);
        // combine writes over coef, which holds R: copy R into the chunk first.
        c.m(c.scratch) = map(coef + i0, n);
        combine(c, p, c.m(c.scratch), c.m(c.scratch), scalar(T(0)), scale, coef + i0);
      }
      break;
    }
    case level::sequence: {
      // Pass 1: the sequence sums K = sum k_a(s_t) and S = sum s_t; pass 2: broadcast.
      double penalty = 0.0, log_ratio = 0.0;
      for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
        const Index n = std::min(chunk_size, q.size - i0);
        out.guarded += fill<Ea, Eb>(c, q, i0, n, p, out.dropped, ws);
        c.m(c.scratch) = c.m(c.valid) * c.m(c.va);
        penalty = saturated(penalty + saturated_sum(c, c.scratch));
        log_ratio = saturated(log_ratio + saturated_sum(c, c.s));
      }
      const T lo = p.lowest, hi = p.highest;
      T S = T(log_ratio);
      if (S < lo || S > hi) {
        ++out.guarded;
        S = std::clamp(S, lo, hi);
      }
      const T top = std::numeric_limits<T>::max();
      const T K = T(std::clamp(penalty, -double(top), double(top)));
      T A = Ea::value(S), D = Eb::derivative(S);
      if (p.clamp_a) A = clamp_estimate<Ea>(s.clamp, S).value;
      if (p.clamp_b) D = clamp_estimate<Eb>(s.clamp, S).derivative;
      const T share = A / T(n_b);
      for (Index i0 = 0; i0 < q.size; i0 += chunk_size) {
        const Index n = std::min(chunk_size, q.size - i0);
        fill<Ea, Eb>(c, q, i0, n, p, ignored, ws);
        if (has_loss_part(s.term.where)) {
          c.m(c.scratch) = c.m(c.used) * c.m(c.valid) * share;
          total += double(c.m(c.scratch).sum());
        } else {
          total += weighted_values(c);
        }
        map(value + i0, n) = c.m(c.scratch);
        combine(c, p, scalar(K), scalar(A), scalar(D), scale, coef + i0);
      }
      break;
    }
  }
  return account(out, n_b, scale, total);
}

template <class T, class M>
T* output_row(const padded_batch<T, M>&, const strided_rows<T>& out,
              const sequence_view<T, M>& q) {
  return out.row(q.row);
}
template <class T, class M, class O>
T* output_row(const packed_batch<T, M, O>&, const strided_rows<T>& out,
              const sequence_view<T, M>& q) {
  return out.data + q.first;
}

/// A writable view of an output array (Eigen's idiom for writing through a const
/// reference, so that temporaries such as Maps can be passed).
template <class T, class M, class V>
strided_rows<T> output_view(const padded_batch<T, M>& b, const Eigen::DenseBase<V>& x,
                            const char* name) {
  const auto v = rows_of(x, name);
  require_same_shape(b.logp, "logp", v, name);
  return {const_cast<T*>(v.data), v.rows, v.cols, v.stride};
}
template <class T, class M, class O, class V>
strided_rows<T> output_view(const packed_batch<T, M, O>& b, const Eigen::DenseBase<V>& x,
                            const char* name) {
  const auto v = vector_of(x, name);
  if (v.cols != b.tokens)
    raise<shape_error>(cat("shape mismatch: logp has ", b.tokens, " tokens but ", name,
                           " has ", v.cols));
  return {const_cast<T*>(v.data), v.rows, v.cols, v.stride};
}

template <class Ea, class Eb, class Batch, class T>
summary run(const spec& s, const Batch& batch, const strided_rows<T>& value,
            const strided_rows<T>& coef, const options& opt) {
  static_assert(require_estimator<Ea>() && require_estimator<Eb>());
  plan<T> p;
  p.s = &s;
  p.nonfinite = opt.nonfinite;
  const clamp_policy& cp = s.clamp;
  // parse_spec refuses such a band; a spec assembled in C++ comes here unchecked, and the
  // guard (before the clamp) cannot keep s finite inside a band that excludes 0.
  const std::string band = clamp_band_problem(cp);
  if (!band.empty()) raise<spec_error>(cat("spec '", to_string(s), "': ", band));
  p.clamp_a = cp.active() && clamps<Ea>(cp);
  p.clamp_b = cp.active() && clamps<Eb>(cp);
  // The guard keeps s where each estimator in use stays finite. An estimator whose clamp
  // bounds s inside that range is evaluated at the clamped s and needs no guard of its
  // own (verl's k3+ at s = -100 keeps the k2 gradient -100, as verl does).
  const T top = std::numeric_limits<T>::max();
  auto lowest = [&](auto tag, bool clamped) {
    using E = decltype(tag);
    return clamped && T(cp.log_lo) >= E::template lowest_safe<T>() ? -top
                                                                   : E::template lowest_safe<T>();
  };
  auto highest = [&](auto tag, bool clamped) {
    using E = decltype(tag);
    return clamped && T(cp.log_hi) <= E::template highest_safe<T>() ? top
                                                                    : E::template highest_safe<T>();
  };
  p.lowest = std::max(lowest(Ea{}, p.clamp_a), lowest(Eb{}, p.clamp_b));
  p.highest = std::min(highest(Ea{}, p.clamp_a), highest(Eb{}, p.clamp_b));
  p.log_bound = exp_bound<T>();
  const importance& is = s.importance;
  const T inf = std::numeric_limits<T>::infinity();
  p.clip = is.truncated() ? T(is.clip) : inf;
  p.log_clip = is.truncated() ? std::log(T(is.clip)) : inf;
  p.log_lo = is.mask_lo > 0 ? std::log(T(is.mask_lo)) : -inf;
  p.log_hi = is.mask_hi < std::numeric_limits<double>::infinity() ? std::log(T(is.mask_hi)) : inf;
  p.detach = cp.detach_weight && cp.log_bounded() && (p.clamp_a || p.clamp_b) &&
             is.mode == weighting::differentiable;
  // An empty batch has nothing to weight (and its empty arrays no data to tell whether
  // behaviour log-probs were given).
  if (is.active() && !batch.has_behavior() && batch.sequences() > 0 && batch.positions() > 0) {
    // NeMo-RL's default weight, exp(lp - sg(lp)), needs none: lb = logp.
    if (s.preset == preset::nemo_rl)
      return run<Ea, Eb>(s, batch.with_logp_as_behavior(), value, coef, opt);
    raise(input_error(cat("spec '", to_string(s), "' weights tokens by pi/mu (is=",
                          to_string(is.mode), ") but the batch has no behavior log-probs; "
                          "add them with .with_behavior(lb)"),
                      input_reason::missing_behavior, "behavior"));
  }

  // Counts the aggregation needs before the first coefficient: N_tokens for token-mean,
  // B_nonempty for the sequence means, unless the caller passed global ones (checked against
  // the local counts, which the pass counts anyway, at the end).
  const bool need_tokens = s.aggregation == aggregation::token_mean && opt.counts.tokens < 0;
  const bool need_sequences = s.aggregation != aggregation::token_mean &&
                              s.aggregation != aggregation::token_sum &&
                              opt.counts.sequences < 0;
  p.tokens = opt.counts.tokens;
  p.sequences = opt.counts.sequences;
  if (need_tokens || need_sequences) {
    Index tokens = 0, sequences = 0;
    for (Index b = 0; b < batch.sequences(); ++b) {
      const auto q = batch.sequence(b);
      if (need_tokens) {
        const Index n = count_valid(q);
        tokens += n;
        sequences += n > 0;
      } else {
        sequences += any_valid(q);
      }
    }
    if (need_tokens) p.tokens = tokens;
    if (need_sequences) p.sequences = sequences;
  }

  summary out;
  chunk<T> c;
  if (!is.active()) {  // fill() leaves the weights alone then
    std::fill(c.used, c.used + chunk_size, T(1));
    std::fill(c.grad, c.grad + chunk_size, T(0));
  }
  double total = 0.0;
  for (Index b = 0; b < batch.sequences(); ++b) {
    const auto q = batch.sequence(b);
    total = saturated(total + run_sequence<Ea, Eb>(q, output_row(batch, value, q),
                                                   output_row(batch, coef, q), p, c, out));
  }
  check_counts(opt.counts, out.tokens, out.sequences);
  out.kl = out.tokens > 0 ? total / double(out.tokens) : 0.0;
  out.kl_sequence = out.sequences > 0 ? total / double(out.sequences) : 0.0;
  return out;
}

/// The spec's estimators, from run-time values to the kernel's template arguments. The one
/// function per batch type that instantiates every estimator pair's kernel: klgrad/instances.hpp
/// compiles it once for a whole program.
template <class Batch, class T>
summary dispatch(const spec& s, const Batch& batch, const strided_rows<T>& value,
                 const strided_rows<T>& coef, const options& opt) {
  return visit(s.term.value_estimator, [&](auto a) {
    return visit(s.term.gradient_estimator, [&](auto b) {
      return run<decltype(a), decltype(b)>(s, batch, value, coef, opt);
    });
  });
}

}  // namespace detail

/// Evaluates a spec on a batch. Writes, for every position, value (the divergence estimate
/// the configuration logs) and coef (beta * a_{b,t} * c_{b,t}, the detached coefficient to
/// back-propagate through log pi: loss_surrogate = sum coef * logp); masked positions get 0.
/// value and coef are caller-owned arrays (or Maps) of the batch's shape and scalar type.
template <class Batch, class V, class C>
summary evaluate(const spec& s, const Batch& batch, const Eigen::DenseBase<V>& value,
                 const Eigen::DenseBase<C>& coef, const options& opt = {}) {
  using T = typename Batch::scalar;
  static_assert(std::is_same_v<typename V::Scalar, T> && std::is_same_v<typename C::Scalar, T>,
                "klgrad: value and coef must have the batch's scalar type");
  return detail::dispatch(s, batch, detail::output_view(batch, value, "value"),
                          detail::output_view(batch, coef, "coef"), opt);
}

/// evaluate() with estimator types of your own (the estimator concept, estimators.hpp): Ev
/// gives the value (and the in-reward penalty), Eg the derivative the as-loss part
/// back-propagates. The spec gives everything else (placement, weights, clamps, level,
/// aggregation, beta); its estimator names are not used. The runtime path runs the same
/// kernel, with the shipped estimators' types.
template <class Ev, class Eg = Ev, class Batch, class V, class C>
summary evaluate(const spec& s, const Batch& batch, const Eigen::DenseBase<V>& value,
                 const Eigen::DenseBase<C>& coef, const options& opt = {}) {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  using T = typename Batch::scalar;
  static_assert(std::is_same_v<typename V::Scalar, T> && std::is_same_v<typename C::Scalar, T>,
                "klgrad: value and coef must have the batch's scalar type");
  return detail::run<Ev, Eg>(s, batch, detail::output_view(batch, value, "value"),
                             detail::output_view(batch, coef, "coef"), opt);
}

}  // namespace klgrad

#ifdef KLGRAD_EXTERN_TEMPLATES
#include "instances.hpp"
#endif
