// A chunk of a sequence's tokens, the kernel's unit of work: its buffers, the one packet pass
// over the inputs that every path starts with, saturating sums, and the checks of the inputs.
#pragma once

#include "../support/errors.hpp"
#include "../views/batch.hpp"
#include "plan.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace klgrad::detail {

inline constexpr Index chunk_size = 256;

/// Per-token quantities of one chunk, computed once and shared by every level.
template <class T>
struct chunk {
  using array = Eigen::Array<T, Eigen::Dynamic, 1>;
  using map = Eigen::Map<array>;
  alignas(64) T lanes[chunk_size];  ///< a packet mask: all bits set for a valid token, else 0
  alignas(64) T valid[chunk_size];  ///< 1 for a valid token, 0 for a masked one
  alignas(64) T s[chunk_size];      ///< guarded log-ratio, 0 where masked
  alignas(64) T estimate[chunk_size];    ///< the value estimator's k_a(s)
  alignas(64) T derivative[chunk_size];  ///< the gradient estimator's k_b'(s)
  alignas(64) T used[chunk_size];   ///< weight multiplying the token (1 without weights)
  alignas(64) T grad[chunk_size];   ///< d(used)/d(lp) (differentiable, not truncated)
  alignas(64) T scratch[chunk_size];  ///< weighted values, sums, copies
  alignas(64) T inside[chunk_size];   ///< 1 where the clamp's log-ratio bound let s through
                                      ///< (everywhere without a clamp)
  Index n = 0;
  map m(T* p) { return map(p, n); }
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
    if (!valid_at(q.mask, i)) continue;
    if (!std::isfinite(q.logp[i])) report_nonfinite("logp", q.row, i, q.first + i, q.logp[i]);
    if (!std::isfinite(q.ref[i])) report_nonfinite("ref", q.row, i, q.first + i, q.ref[i]);
    if (q.behavior && !std::isfinite(q.behavior[i]))
      report_nonfinite("behavior", q.row, i, q.first + i, q.behavior[i]);
  }
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

/// The weighted values of a chunk (used * k_a) into scratch, summed. The chunk buffers always
/// sit at the same alignment, so Eigen's vectorised sum adds in the same order whatever the
/// layout of the caller's arrays: shards reproduce the unsharded sums.
template <class T>
double weighted_values(chunk<T>& c) {
  c.m(c.scratch) = c.m(c.used) * c.m(c.estimate);
  return saturated_sum(c, c.scratch);
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
    const auto* mk = mask_entries(q.mask) + i0;
    std::uint32_t count = 0;
    for (Index i = 0; i < n; ++i) {
      const bool valid = mk[i] != 0;
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
  P excess = zero;
  // Two running sums, the even packets' and the odd ones': with one, each packet's add waits
  // for the end of the previous packet's estimator, and k3's loop ran 1.6x as long on this
  // project's Intel machine (docs/performance.md, "Two running sums").
  P sum[2] = {zero, zero};
  // d - s is +0 unless the guard clamped d (then at least an ulp of the bound) or d is not
  // finite (then inf or NaN): the bits of excess stay 0 exactly when neither happened.
  auto one = [&](Index k, const P& a, const P& b, auto whole, P& total) {
    const P valid = pload<P>(c.lanes + k);
    const P d = pand(psub(a, b), valid);
    const P s = pmin(pmax(d, lo), hi);
    excess = por(excess, psub(d, s));
    total = padd(total, body(k, s, valid, whole));
  };
  auto full = [&](Index k, P& total) {
    one(k, ploadu<P>(lp + k), ploadu<P>(lr + k), full_packet{}, total);
  };
  Index k = 0;
  for (; k + 2 * W <= n; k += 2 * W) {
    full(k, sum[0]);
    full(k + W, sum[1]);
  }
  if (k + W <= n) {
    full(k, sum[0]);
    k += W;
  }
  if (k < n) {
    alignas(64) T lp_tail[std::size_t(W)] = {}, lr_tail[std::size_t(W)] = {};
    std::copy(lp + k, lp + n, lp_tail);
    std::copy(lr + k, lr + n, lr_tail);
    std::fill(c.lanes + n, c.lanes + k + W, T(0));
    one(k, pload<P>(lp_tail), pload<P>(lr_tail), partial_packet{}, sum[(k / W) % 2]);
  }
  out.sum = predux(padd(sum[0], sum[1]));
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

}  // namespace klgrad::detail
