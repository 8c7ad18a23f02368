// Streaming passes over rows of logits: an online maximum and sum of exponentials in
// L1-sized blocks, vectorised with Eigen's packet math, with no allocation; shared by the
// full-vocabulary divergences (logits.hpp) and the sampled-token paths (sampled.hpp).
#pragma once

#include "batch.hpp"
#include "errors.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

namespace klgrad::detail {

namespace ei = Eigen::internal;

template <class T>
using packet_of = typename ei::packet_traits<T>::type;

/// Elements per block of an online pass: 8 KiB of each row, so that the block maximum and
/// the exponentials read the same bytes, the second time from L1.
template <class T>
inline constexpr Index stream_block = Index(8192 / sizeof(T));

// Element-wise helpers that work on a packet or on a single scalar (the tail of a row).

/// Below this exp(x) is under the smallest normal number and is taken as 0.
template <class T>
inline constexpr T exp_floor = std::is_same_v<T, float> ? T(-87.33) : T(-708.39);

/// exp(x) that is exactly 0 for -inf and below exp_floor: Eigen's generic pexp returns
/// exp(lowest clamp), a denormal, for -inf, which would turn 0 * (-inf) into NaN.
template <class P>
P v_exp(const P& x) {
  using T = typename ei::unpacket_traits<P>::type;
  return ei::pselect(ei::pcmp_lt(x, ei::pset1<P>(exp_floor<T>)), ei::pset1<P>(T(0)), ei::pexp(x));
}
inline float v_exp(float x) { return std::exp(x); }
inline double v_exp(double x) { return std::exp(x); }
template <class P>
P v_log(const P& x) {
  return ei::plog(x);
}
inline float v_log(float x) { return std::log(x); }
inline double v_log(double x) { return std::log(x); }
/// a where p > 0, else 0: drops the 0 * inf and 0 * nan of zero-probability entries
/// (-inf logits, or exponentials that underflowed).
template <class P>
P where_positive(const P& p, const P& a) {
  const P zero = ei::pset1<P>(typename ei::unpacket_traits<P>::type(0));
  return ei::pselect(ei::pcmp_lt(zero, p), a, zero);
}
inline float where_positive(float p, float a) { return p > 0.f ? a : 0.f; }
inline double where_positive(double p, double a) { return p > 0.0 ? a : 0.0; }

/// Calls f(acc, i) for i = 0, L, 2L, ... over whole packets of n elements with acc an array
/// of K packet accumulators, then f(acc, i) over the remaining elements with K scalar ones;
/// f adds its terms into acc. Returns the K totals in double.
template <class T, std::size_t K, class F>
std::array<double, K> reduce_row(Index n, F&& f) {
  using P = packet_of<T>;
  constexpr Index L = ei::packet_traits<T>::size;
  P acc[K];
  for (std::size_t k = 0; k < K; ++k) acc[k] = ei::pset1<P>(T(0));
  Index i = 0;
  for (; i + L <= n; i += L) f(acc, i);
  T tail[K] = {};
  for (; i < n; ++i) f(tail, i);
  std::array<double, K> out;
  for (std::size_t k = 0; k < K; ++k) out[k] = double(ei::predux(acc[k])) + double(tail[k]);
  return out;
}

/// Calls f(P{}, i) over whole packets and f(T{}, i) over the tail (element-wise writes).
template <class T, class F>
void for_each_packet(Index n, F&& f) {
  using P = packet_of<T>;
  constexpr Index L = ei::packet_traits<T>::size;
  Index i = 0;
  for (; i + L <= n; i += L) f(P{}, i);
  for (; i < n; ++i) f(T{}, i);
}

template <class P, class T>
P load(const T* p, Index i) {
  return ei::ploadu<P>(p + i);
}
template <class P, class T>
void store(T* p, Index i, const P& x) {
  ei::pstoreu(p + i, x);
}
template <class P, class T>
P splat(T x) {
  return ei::pset1<P>(x);
}

template <class T>
T max_of(const T* x, Index n) {
  return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(x, n).maxCoeff();
}

/// State of the online pass over the scaled rows x = z / tau and (optionally) y:
/// log sum exp(x) = cx + log(sx), and w = sum_i e_i ((x_i - cx) - (y_i - cy)) with
/// e_i = exp(x_i - cx) over the entries where e_i > 0, so that
/// E_softmax(x)[x - y] = w / sx + (cx - cy) with no cancellation between the shifts.
/// The shifts are the running maxima once a finite entry has been seen (0 before).
template <class T>
struct online_state {
  T mx = -std::numeric_limits<T>::infinity();  ///< running maximum of x
  T my = -std::numeric_limits<T>::infinity();  ///< running maximum of y
  T cx = 0, cy = 0;                            ///< shifts
  double sx = 0, sy = 0, w = 0;
  double log_sx() const { return std::log(sx); }
  double log_sy() const { return std::log(sy); }
  /// log-sum-exp of x and y; not finite iff the row is all -inf or holds a NaN / +inf
  double lse_x() const { return double(cx) + std::log(sx); }
  double lse_y() const { return double(cy) + std::log(sy); }
};

/// One pass over a row (and y's row when HasY): online maxima and sums of exponentials of
/// x = xs * it and y = ys * it, and the weighted log-ratio sum w when Weighted. Reads each
/// element once from memory; nothing is allocated.
template <bool HasY, bool Weighted, class T>
online_state<T> online_pass(const T* xs, const T* ys, Index V, T it) {
  static_assert(HasY || !Weighted, "the weighted sum needs a second row");
  online_state<T> s;
  constexpr Index B = stream_block<T>;
  for (Index i0 = 0; i0 < V; i0 += B) {
    const Index n = std::min(B, V - i0);
    const T* xb = xs + i0;
    const T* yb = HasY ? ys + i0 : nullptr;
    T ncx = s.cx, ncy = s.cy;
    const T bx = max_of(xb, n) * it;
    if (bx > s.mx) s.mx = ncx = bx;
    if constexpr (HasY) {
      const T by = max_of(yb, n) * it;
      if (by > s.my) s.my = ncy = by;
    }
    if (ncx != s.cx || ncy != s.cy) {
      // Re-express the sums relative to the new shifts; a sum still 0 stays 0 (its old
      // shift was a placeholder and the factor could overflow).
      const double fx = std::exp(double(s.cx) - double(ncx));
      if constexpr (Weighted)
        s.w = s.sx == 0 ? 0.0
                        : fx * (s.w - s.sx * ((double(ncx) - double(s.cx)) -
                                              (double(ncy) - double(s.cy))));
      s.sx = s.sx == 0 ? 0.0 : s.sx * fx;
      if constexpr (HasY)
        s.sy = s.sy == 0 ? 0.0 : s.sy * std::exp(double(s.cy) - double(ncy));
      s.cx = ncx;
      s.cy = ncy;
    }
    const T cx = s.cx, cy = s.cy;
    const auto r = reduce_row<T, 3>(n, [&](auto* acc, Index i) {
      using P = std::remove_pointer_t<decltype(acc)>;
      const P itp = splat<P>(it);
      const P X = ei::psub(ei::pmul(load<P>(xb, i), itp), splat<P>(cx));
      const P ex = v_exp(X);
      acc[0] = ei::padd(acc[0], ex);
      if constexpr (HasY) {
        const P Y = ei::psub(ei::pmul(load<P>(yb, i), itp), splat<P>(cy));
        acc[1] = ei::padd(acc[1], v_exp(Y));
        if constexpr (Weighted)
          acc[2] = ei::padd(acc[2], where_positive(ex, ei::pmul(ex, ei::psub(X, Y))));
      }
    });
    s.sx += r[0];
    s.sy += r[1];
    s.w += r[2];
  }
  return s;
}

/// The same for rows that already hold normalised log-probabilities, taken as they are:
/// no maxima, shifts 0, sx = sy = 1 (sx = 0 flags a row with no positive probability or a
/// NaN), w = sum exp(x) (x - y).
template <bool Weighted, class T>
online_state<T> normalized_pass(const T* xs, const T* ys, Index V) {
  online_state<T> s;
  const auto r = reduce_row<T, 2>(V, [&](auto* acc, Index i) {
    using P = std::remove_pointer_t<decltype(acc)>;
    const P X = load<P>(xs, i);
    const P ex = v_exp(X);
    acc[0] = ei::padd(acc[0], ex);
    if constexpr (Weighted)
      acc[1] = ei::padd(acc[1], where_positive(ex, ei::pmul(ex, ei::psub(X, load<P>(ys, i)))));
  });
  // Trusted as normalised: no renormalisation (sx = 1), but an all -inf or NaN row still
  // shows as sx = 0.
  s.sx = r[0] > 0 ? 1.0 : 0.0;
  s.sy = 1.0;
  s.w = r[1];
  s.mx = s.my = T(0);
  return s;
}

/// The first entry of a row that is NaN or +inf, or -1.
template <class T>
Index first_invalid(const T* x, Index V) {
  for (Index j = 0; j < V; ++j)
    if (std::isnan(x[j]) || x[j] == std::numeric_limits<T>::infinity()) return j;
  return -1;
}

/// Where row `row` of a logits array sits in a padded B x T batch, for messages.
inline std::string row_place(Index row, Index positions) {
  if (positions <= 0) return cat("row ", row);
  return cat("row ", row, " (sequence ", row / positions, ", position ", row % positions, ")");
}

/// Raises input_error for a row whose log-sum-exp is not finite: the first NaN / +inf
/// entry, or "no finite entry" when every entry is -inf.
template <class T>
[[noreturn]] void report_bad_row(const T* x, Index V, const char* name, Index row,
                                 Index positions) {
  const Index j = first_invalid(x, V);
  if (j >= 0)
    raise<input_error>(cat(name, " ", row_place(row, positions), ", column ", j, " is ", x[j],
                           "; logits must be finite or -inf"));
  raise<input_error>(cat(name, " ", row_place(row, positions),
                         " has no finite entry (every logit is -inf), so its softmax is "
                         "undefined; mask the row out"));
}

/// Checks a temperature: finite and positive.
inline void check_temperature(double tau) {
  if (!(tau > 0.0) || !std::isfinite(tau))
    raise<input_error>(cat("temperature must be finite and > 0, got ", tau));
}

/// A flat view of an array of N entries (any shape, contiguous rows), for per-row inputs
/// and outputs such as values, token ids, coefficients and masks.
template <class D>
auto flat_of(const Eigen::DenseBase<D>& x, const char* name, Index n, Index rows, Index cols) {
  const auto v = rows_of(x, name);
  if (v.rows * v.cols != n)
    raise<shape_error>(cat("shape mismatch: logits are ", shape_text(rows, cols), " (", n,
                           " rows) but ", name, " is ", shape_text(v.rows, v.cols), " (",
                           v.rows * v.cols, " entries)"));
  if (v.rows > 1 && v.stride != v.cols)
    raise<shape_error>(cat(name, " is ", shape_text(v.rows, v.cols), " with row stride ",
                           v.stride, "; it must be contiguous"));
  return v.data;
}

}  // namespace klgrad::detail
