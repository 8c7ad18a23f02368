// Streaming passes over rows of logits: an online maximum and sum of exponentials in
// L1-sized blocks, vectorised with Eigen's packet math, with no allocation; shared by the
// full-vocabulary divergences (logits.hpp) and the sampled-token paths (logits/sampled.hpp).
#pragma once

#include "../support/scalars.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

namespace klgrad {
using Eigen::Index;
}  // namespace klgrad

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
/// Eigen's exp of a packet (no zero below exp_floor), std::exp of a scalar.
template <class P>
P pexp_or_exp(const P& x) {
  return ei::pexp(x);
}
inline float pexp_or_exp(float x) { return std::exp(x); }
inline double pexp_or_exp(double x) { return std::exp(x); }
/// a where p > 0, else 0: drops the 0 * inf and 0 * nan of zero-probability entries
/// (-inf logits, or exponentials that underflowed).
template <class P>
P where_positive(const P& p, const P& a) {
  const P zero = ei::pset1<P>(typename ei::unpacket_traits<P>::type(0));
  return ei::pselect(ei::pcmp_lt(zero, p), a, zero);
}
inline float where_positive(float p, float a) { return p > 0.f ? a : 0.f; }
inline double where_positive(double p, double a) { return p > 0.0 ? a : 0.0; }
/// a where exp(x) is a normal number (x > exp_floor), else 0: where_positive(v_exp(x), a)
/// without computing v_exp's zero, for a caller that takes Eigen's exp as it is.
template <class P>
P where_exp_normal(const P& x, const P& a) {
  using T = typename ei::unpacket_traits<P>::type;
  return ei::pselect(ei::pcmp_lt(ei::pset1<P>(exp_floor<T>), x), a, ei::pset1<P>(T(0)));
}
inline float where_exp_normal(float x, float a) { return x > exp_floor<float> ? a : 0.f; }
inline double where_exp_normal(double x, double a) { return x > exp_floor<double> ? a : 0.0; }

/// Calls f(acc, i) for i = 0, L, 2L, ... over whole packets of n elements with acc an array
/// of K packet accumulators, then f(acc, i) over the remaining elements with K scalar ones;
/// f adds its terms into acc. Returns the K totals in double. The even packets and the odd
/// ones add into two sets of accumulators (the loop unrolled by two), summed at the end:
/// with one set, each packet's add waits for the end of the previous packet's terms
/// (docs/performance.md, "Two running sums").
template <class T, std::size_t K, class F>
std::array<double, K> reduce_row(Index n, F&& f) {
  using P = packet_of<T>;
  constexpr Index L = ei::packet_traits<T>::size;
  P even[K], odd[K];
  for (std::size_t k = 0; k < K; ++k) even[k] = odd[k] = ei::pset1<P>(T(0));
  Index i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    f(even, i);
    f(odd, i + L);
  }
  if (i + L <= n) {
    f(even, i);
    i += L;
  }
  T tail[K] = {};
  for (; i < n; ++i) f(tail, i);
  std::array<double, K> out;
  for (std::size_t k = 0; k < K; ++k)
    out[k] = double(ei::predux(ei::padd(even[k], odd[k]))) + double(tail[k]);
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

/// Bytes ahead of the entry being read that the streaming passes ask the cache to fetch
/// (define KLGRAD_PREFETCH_BYTES to change it; 0 turns the prefetches off). On this
/// project's machines the hardware prefetcher alone left a pass over rows in memory at
/// less than half the speed of the same pass over rows in cache (docs/performance.md,
/// "Prefetching").
#ifndef KLGRAD_PREFETCH_BYTES
#define KLGRAD_PREFETCH_BYTES 2048
#endif
inline constexpr std::uintptr_t prefetch_bytes = KLGRAD_PREFETCH_BYTES;

/// Asks for the cache line prefetch_bytes past entry i of row p: a hint, which never faults,
/// so that the address may lie past the row's end (it is formed as an integer, not as a
/// pointer past the array).
template <class T>
void prefetch_ahead(const T* p, Index i) {
#if defined(__GNUC__)
  if constexpr (prefetch_bytes > 0)
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p + i) +
                                                     prefetch_bytes));
#else
  (void)p, (void)i;
#endif
}

// 16-bit logits (bf16, fp16; support/scalars.hpp): stored as Eigen::bfloat16 / Eigen::half,
// widened to float as they are loaded, so that every pass computes and accumulates in
// float exactly as it does for float rows holding the same values. Eigen's own bfloat16 /
// half packets round every operation back to 16 bits, which is not float accumulation.

/// A packet of float lanes widened one by one: the portable path (any packet size, fp16
/// without F16C, bf16 without SSE2).
template <class P, class S>
P widen_lanes(const S* p) {
  constexpr Index L = ei::unpacket_traits<P>::size;
  float lanes[std::size_t(L)];
  for (Index k = 0; k < L; ++k) lanes[k] = widen(p[k]);
  return ei::ploadu<P>(lanes);
}

/// Lanes of a float packet type (1 for a scalar); the dispatch below goes by it, since
/// naming __m256 as a template argument drops its attributes (GCC's -Wignored-attributes).
template <class P>
inline constexpr Index lanes_v = ei::unpacket_traits<P>::size;

/// Loads entries i.. of a bf16 row as a float packet (or one float): each lane's 16 bits
/// shifted into the upper half of a 32-bit lane, which is the float of the same value.
template <class P>
P load(const Eigen::bfloat16* p, Index i) {
  if constexpr (std::is_same_v<P, float>) return widen(p[i]);
#if defined(__AVX512F__)
  else if constexpr (lanes_v<P> == 16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i))), 16));
#endif
#if defined(__AVX2__)
  else if constexpr (lanes_v<P> == 8)
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))), 16));
#endif
#if defined(__SSE2__)
  else if constexpr (lanes_v<P> == 4)
    return _mm_castsi128_ps(_mm_unpacklo_epi16(
        _mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i))));
#endif
  else return widen_lanes<P>(p + i);
}

/// Loads entries i.. of an fp16 row as a float packet (or one float): F16C's conversion
/// where the build has it, else lane by lane.
template <class P>
P load(const Eigen::half* p, Index i) {
  if constexpr (std::is_same_v<P, float>) return widen(p[i]);
#if defined(__AVX512F__)
  else if constexpr (lanes_v<P> == 16)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
#endif
#if defined(__F16C__)
  else if constexpr (lanes_v<P> == 8)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
  else if constexpr (lanes_v<P> == 4)
    return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
#endif
  else return widen_lanes<P>(p + i);
}

/// load<P>(p, i) of a row read from start to end, prefetching prefetch_bytes ahead.
template <class P, class T>
P load_ahead(const T* p, Index i) {
  prefetch_ahead(p, i);
  return load<P>(p, i);
}

template <class P, class T>
void store(T* p, Index i, const P& x) {
  ei::pstoreu(p + i, x);
}
/// Stores a packet past the caches (gradient rows are written once and dwarf them, so an
/// ordinary store would first read each line in). p must be aligned to the packet.
inline void store_stream(float* p, float x) { *p = x; }
inline void store_stream(double* p, double x) { *p = x; }
#if defined(__SSE2__)
inline void store_stream(float* p, __m128 x) { _mm_stream_ps(p, x); }
inline void store_stream(double* p, __m128d x) { _mm_stream_pd(p, x); }
#endif
#if defined(__AVX__)
inline void store_stream(float* p, __m256 x) { _mm256_stream_ps(p, x); }
inline void store_stream(double* p, __m256d x) { _mm256_stream_pd(p, x); }
#endif
#if defined(__AVX512F__)
inline void store_stream(float* p, __m512 x) { _mm512_stream_ps(p, x); }
inline void store_stream(double* p, __m512d x) { _mm512_stream_pd(p, x); }
#endif

/// Rows at least this long (in bytes) are written with streaming stores (define
/// KLGRAD_STREAM_STORE_BYTES to change the threshold; a huge value turns them off).
#ifndef KLGRAD_STREAM_STORE_BYTES
#define KLGRAD_STREAM_STORE_BYTES 65536
#endif
inline constexpr Index stream_store_bytes = Index(KLGRAD_STREAM_STORE_BYTES);

/// Whether a row of n entries is written with streaming stores: at least
/// stream_store_bytes long, and packets of more than one lane.
template <class T>
bool streams(Index n) {
  return n * Index(sizeof(T)) >= stream_store_bytes && ei::packet_traits<T>::size > 1;
}

/// Calls f(P{}, i) or f(T{}, i) over 0..n-1 so that out + i is packet-aligned for every
/// packet call (scalar calls peel the unaligned head and the tail); f returns the value to
/// store at out + i. With `streaming` (by default: a long row) the packets are stored with
/// streaming stores, else normally.
template <class T, class F>
void write_row(T* out, Index n, F&& f, bool streaming) {
  using P = packet_of<T>;
  constexpr Index L = ei::packet_traits<T>::size;
  Index i = 0;
  if (streaming) {
    const auto address = reinterpret_cast<std::uintptr_t>(out);
    if (address % sizeof(T) == 0) {
      const Index misaligned = Index((address / sizeof(T)) % std::uintptr_t(L));
      const Index head = std::min(n, misaligned == 0 ? Index(0) : L - misaligned);
      for (; i < head; ++i) out[i] = f(T{}, i);
      for (; i + L <= n; i += L) store_stream(out + i, f(P{}, i));
#if defined(__SSE2__)
      _mm_sfence();  // order the streaming stores before anything that follows
#endif
    }
  }
  for (; i + L <= n; i += L) ei::pstoreu(out + i, f(P{}, i));
  for (; i < n; ++i) out[i] = f(T{}, i);
}
template <class T, class F>
void write_row(T* out, Index n, F&& f) {
  write_row(out, n, std::forward<F>(f), streams<T>(n));
}

template <class P, class T>
P splat(T x) {
  return ei::pset1<P>(x);
}

/// x_i it - shift of a row at entries i.. (a packet or a scalar), in one rounding; the row
/// is read in order (load_ahead).
template <class P, class S, class T = compute_t<S>>
P shifted_at(const S* x, Index i, T it, T shift) {
  return ei::pmadd(load_ahead<P>(x, i), splat<P>(it), splat<P>(-shift));
}

/// log softmax of a row at entries i..: (x_i it - shift) - log_sum, the shift subtracted
/// before the log-sum, so that the result stays accurate when |x| is large.
template <class P, class S, class T = compute_t<S>>
P log_softmax_at(const S* x, Index i, T it, T shift, T log_sum) {
  return ei::psub(shifted_at<P>(x, i, it, shift), splat<P>(log_sum));
}

/// The largest lane of a packet (a plain loop: GCC 12 warns inside predux_max's AVX-512
/// intrinsics with -march=native).
template <class T, class P>
T horizontal_max(const P& x) {
  constexpr Index L = ei::packet_traits<T>::size;
  T lanes[std::size_t(L)];
  ei::pstoreu(lanes, x);
  T m = lanes[0];
  for (Index i = 1; i < L; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

template <class T, class = std::enable_if_t<!is_16bit_v<T>>>
T max_of(const T* x, Index n) {
  return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(x, n).maxCoeff();
}
/// The same for a 16-bit row, in float (the widened maximum is the maximum of the widened).
template <class S, class = std::enable_if_t<is_16bit_v<S>>>
float max_of(const S* x, Index n) {
  using P = packet_of<float>;
  constexpr Index L = ei::packet_traits<float>::size;
  P m = splat<P>(-std::numeric_limits<float>::infinity());
  Index i = 0;
  for (; i + L <= n; i += L) m = ei::pmax(m, load<P>(x, i));
  float out = horizontal_max<float>(m);
  for (; i < n; ++i) out = std::max(out, widen(x[i]));
  return out;
}

/// State of the online pass over the scaled rows x = z / tau and (optionally) y:
/// log sum exp(x) = cx + log(sx), and w = sum_i e_i ((x_i - cx) - (y_i - cy)) with
/// e_i = exp(x_i - cx) over the entries where e_i > 0, so that
/// E_softmax(x)[x - y] = w / sx + (cx - cy) with no cancellation between the shifts.
/// A shift is a maximum seen so far (0 before the first entry that is not -inf); every entry
/// is at most shift + stream_slack, so no exponential overflows and the largest is >= 1.
template <class T>
struct online_state {
  T cx = 0, cy = 0;                  ///< shifts
  bool x_started = false, y_started = false;  ///< a shift has been taken from the data
  double sx = 0, sy = 0, w = 0;
  double log_sx() const { return std::log(sx); }
  double log_sy() const { return std::log(sy); }
  /// log-sum-exp of x and y; not finite iff the row is all -inf or holds a NaN / +inf
  double lse_x() const { return double(cx) + std::log(sx); }
  double lse_y() const { return double(cy) + std::log(sy); }
};

/// How far an entry may exceed the shift before the block is re-shifted and redone.
inline constexpr double stream_slack = 16;

/// One pass over a row (and y's row when HasY): sums of exponentials of x = xs * it and
/// y = ys * it relative to running shifts, and the weighted log-ratio sum w when Weighted.
/// Each block's maximum is taken in the same loop as its exponentials; only when it exceeds
/// the shift by more than stream_slack (at most a few times per row, as the maximum grows)
/// are the sums re-expressed and the block redone from L1. Reads each element once from
/// memory; nothing is allocated.
///
/// With Keep and `kept` (a caller's workspace of kept_size(V) elements, HasY), the
/// exponentials are
/// kept for a later pass: exp(x - shift) at kept[j], exp(y - shift) at kept[V + j], and
/// block b's two shifts at kept[2 V + 2 b], so that the later pass gets softmax(x)_j as
/// kept[j] * exp(shift_b - cx) / sx without an exponential of its own (kept_scale).
///
/// xs and ys may be stored as bf16 / fp16 (S), widened as they are read; the blocks, the
/// shifts and the sums are those of the compute type T, so that the state is the one float
/// rows of the widened values give, bit for bit.
template <bool HasY, bool Weighted, bool Keep = false, class S>
online_state<compute_t<S>> online_pass(const S* xs, const S* ys, Index V, compute_t<S> it,
                                       compute_t<S>* kept = nullptr) {
  static_assert(HasY || !Weighted, "the weighted sum needs a second row");
  static_assert(HasY || !Keep, "online_pass keeps both rows' exponentials");
  using T = compute_t<S>;
  using P = packet_of<T>;
  online_state<T> state;
  constexpr Index B = stream_block<T>;
  constexpr Index L = ei::packet_traits<T>::size;
  const T slack = T(stream_slack), lowest = -std::numeric_limits<T>::infinity();
  for (Index i0 = 0; i0 < V; i0 += B) {
    const Index n = std::min(B, V - i0);
    const S* xb = xs + i0;
    const S* yb = HasY ? ys + i0 : nullptr;
    // Until a row has shown an entry that is not -inf, take the shift from the block.
    T ncx = state.cx, ncy = state.cy;
    if (!state.x_started) {
      const T bx = max_of(xb, n) * it;
      if (bx > lowest) ncx = bx, state.x_started = true;
    }
    if constexpr (HasY) {
      if (!state.y_started) {
        const T by = max_of(yb, n) * it;
        if (by > lowest) ncy = by, state.y_started = true;
      }
    }
    for (;;) {
      if (ncx != state.cx || ncy != state.cy) {
        // Re-express the sums relative to the new shifts; a sum still 0 stays 0.
        const double fx = std::exp(double(state.cx) - double(ncx));
        if constexpr (Weighted)
          state.w = state.sx == 0
                        ? 0.0
                        : fx * (state.w - state.sx * ((double(ncx) - double(state.cx)) -
                                                      (double(ncy) - double(state.cy))));
        state.sx = state.sx == 0 ? 0.0 : state.sx * fx;
        if constexpr (HasY)
          state.sy = state.sy == 0 ? 0.0 : state.sy * std::exp(double(state.cy) - double(ncy));
        state.cx = ncx;
        state.cy = ncy;
      }
      const T cx = state.cx, cy = state.cy;
      const P itp = splat<P>(it), ncxp = splat<P>(-cx), ncyp = splat<P>(-cy);
      // Two sets of running sums, the even packets' and the odd ones' (the loop unrolled by
      // two): with one, each packet's add waits for the end of the previous packet's
      // exponential (docs/performance.md, "Two running sums").
      struct sums {
        P x, y, w;
      };
      const P zero = splat<P>(T(0));
      sums even{zero, zero, zero}, odd = even;
      P mx = splat<P>(lowest), my = mx;
      auto packet = [&](Index i, sums& a) {
        const P xr = load_ahead<P>(xb, i);
        mx = ei::pmax(mx, xr);
        const P X = ei::pmadd(xr, itp, ncxp);
        const P ex = v_exp(X);
        a.x = ei::padd(a.x, ex);
        if constexpr (HasY) {
          const P yr = load_ahead<P>(yb, i);
          my = ei::pmax(my, yr);
          const P Y = ei::pmadd(yr, itp, ncyp);
          const P ey = v_exp(Y);
          a.y = ei::padd(a.y, ey);
          if constexpr (Keep) {
            store(kept, i0 + i, ex);
            store(kept, V + i0 + i, ey);
          }
          if constexpr (Weighted) a.w = ei::padd(a.w, where_positive(ex, ei::pmul(ex, ei::psub(X, Y))));
        }
      };
      Index i = 0;
      for (; i + 2 * L <= n; i += 2 * L) {
        packet(i, even);
        packet(i + L, odd);
      }
      if (i + L <= n) {
        packet(i, even);
        i += L;
      }
      double bsx = double(ei::predux(ei::padd(even.x, odd.x))),
             bsy = double(ei::predux(ei::padd(even.y, odd.y))),
             bw = double(ei::predux(ei::padd(even.w, odd.w)));
      T bmx = horizontal_max<T>(mx), bmy = horizontal_max<T>(my);
      for (; i < n; ++i) {
        const T X = widen(xb[i]) * it - cx, ex = std::exp(X);
        bmx = std::max(bmx, widen(xb[i]));
        bsx += double(ex);
        if constexpr (HasY) {
          const T Y = widen(yb[i]) * it - cy, ey = std::exp(Y);
          bmy = std::max(bmy, widen(yb[i]));
          bsy += double(ey);
          if constexpr (Keep) {
            kept[i0 + i] = ex;
            kept[V + i0 + i] = ey;
          }
          if constexpr (Weighted) bw += double(where_positive(ex, ex * (X - Y)));
        }
      }
      bmx *= it;
      bmy *= it;
      // A new maximum far above the shift: re-shift and redo the block (+inf ends here too
      // and shows as a NaN sum).
      if (bmx > cx + slack) ncx = bmx;
      if (HasY && bmy > cy + slack) ncy = bmy;
      if (ncx != cx || ncy != cy) continue;
      state.sx += bsx;
      state.sy += bsy;
      state.w += bw;
      if constexpr (Keep) {
        kept[2 * V + 2 * (i0 / B)] = cx;
        kept[2 * V + 2 * (i0 / B) + 1] = cy;
      }
      break;
    }
  }
  return state;
}

/// Elements of T that online_pass() keeps for a row of V entries.
template <class T>
Index kept_size(Index V) {
  return 2 * V + 2 * ((V + stream_block<T> - 1) / stream_block<T>);
}

/// The factors that turn the kept exponentials of block b into probabilities:
/// softmax(x)_j = kept[j] * fx, softmax(y)_j = kept[V + j] * fy for j in block b. Once a row
/// has started, its shifts only grow, so exp(shift_b - cx) <= 1; a block before the row's
/// first finite entry kept zeros under the shift 0, whose factor may exceed 1 (or overflow):
/// capped at 1, which those zeros do not see.
template <class T>
std::pair<T, T> kept_scale(const T* kept, Index V, Index b, const online_state<T>& state) {
  const T* shift = kept + 2 * V + 2 * b;
  auto factor = [](T at, T final_shift, double sum) {
    return T(std::min(std::exp(double(at) - double(final_shift)), 1.0) / sum);
  };
  return {factor(shift[0], state.cx, state.sx), factor(shift[1], state.cy, state.sy)};
}

/// Calls f(b0, n, fx, fy) for each block of a kept row: its first entry b0, its length n and
/// its factors (kept_scale).
template <class T, class F>
void for_kept_blocks(const T* kept, Index V, const online_state<T>& state, F&& f) {
  for (Index b0 = 0, b = 0; b0 < V; b0 += stream_block<T>, ++b) {
    const std::pair<T, T> factors = kept_scale(kept, V, b, state);
    f(b0, std::min(stream_block<T>, V - b0), factors.first, factors.second);
  }
}

/// write_row(g, V, f) from kept exponentials: f(tag, i, p, q) returns the entry at i given
/// softmax(x) and softmax(y) there (p, q: the kept exponentials times their block's
/// factors), with no exponential of its own. The row is written block by block, with
/// streaming stores or not as `streaming` says.
template <class T, class F>
void write_from_kept(T* g, const T* kept, Index V, const online_state<T>& state,
                     bool streaming, F&& f) {
  for_kept_blocks(kept, V, state, [&](Index b0, Index n, T fx, T fy) {
    write_row(g + b0, n, [&](auto tag, Index j) {
      using P = decltype(tag);
      const Index i = b0 + j;
      return f(tag, i, ei::pmul(load_ahead<P>(kept, i), splat<P>(fx)),
               ei::pmul(load_ahead<P>(kept + V, i), splat<P>(fy)));
    }, streaming);
  });
}

/// The same for rows that already hold normalised log-probabilities, taken as they are:
/// no maxima, shifts 0, sx = sy = 1 (sx = 0 flags a row with no positive probability or a
/// NaN), w = sum exp(x) (x - y).
template <bool Weighted, class S>
online_state<compute_t<S>> normalized_pass(const S* xs, const S* ys, Index V) {
  using T = compute_t<S>;
  online_state<T> state;
  const auto r = reduce_row<T, 2>(V, [&](auto* acc, Index i) {
    using P = std::remove_pointer_t<decltype(acc)>;
    const P X = load_ahead<P>(xs, i);
    const P ex = v_exp(X);
    acc[0] = ei::padd(acc[0], ex);
    if constexpr (Weighted)
      acc[1] = ei::padd(acc[1],
                        where_positive(ex, ei::pmul(ex, ei::psub(X, load_ahead<P>(ys, i)))));
  });
  // Trusted as normalised: no renormalisation (sx = 1), but an all -inf or NaN row still
  // shows as sx = 0.
  state.sx = r[0] > 0 ? 1.0 : 0.0;
  state.sy = 1.0;
  state.w = r[1];
  state.x_started = state.y_started = true;
  return state;
}

/// The first pass over a row pair: online for logits, plain for log-probabilities.
template <bool HasY, bool Weighted, class S, class T = compute_t<S>>
online_state<T> first_pass(const S* x, const S* y, Index V, T it, bool log_probs) {
  if (log_probs) {
    if constexpr (Weighted) return normalized_pass<true>(x, y, V);
    online_state<T> state = normalized_pass<false>(x, y, V);
    if constexpr (HasY) state.sy = normalized_pass<false>(y, y, V).sx;
    return state;
  }
  return online_pass<HasY, Weighted>(x, y, V, it);
}

}  // namespace klgrad::detail
