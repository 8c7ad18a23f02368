// The row kernels of the full-vocabulary divergences: reverse KL, forward KL and the
// generalised Jensen-Shannon of one row pair, each with its exact gradient with respect to
// the policy logits, streamed over the row with Eigen's packets.
#pragma once

#include "driver.hpp"
#include "normal_log.hpp"
#include "streaming.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

namespace klgrad::detail {

/// KL(softmax(x) || softmax(y)) of one row, x = xs * it, y = ys * it, from the first pass:
/// w / sx - log sx + log sy.
template <class T>
double kl_of(const online_state<T>& state) {
  return state.w / state.sx - state.log_sx() + state.log_sy();
}

/// The first pass over a row pair, keeping both rows' exponentials in `kept` where there is
/// a workspace and the rows are logits (log-probabilities run without it).
template <bool Weighted, class S, class T = compute_t<S>>
online_state<T> first_pass_keeping(const S* x, const S* y, Index V, T it, bool log_probs,
                                   T* kept) {
  return kept && !log_probs ? online_pass<true, Weighted, true>(x, y, V, it, kept)
                            : first_pass<true, Weighted>(x, y, V, it, log_probs);
}

/// RKL of a row (pi = softmax(z it), ref = softmax(z_ref it)) and, with g, its gradient
///   dRKL/dz_j = it * pi_j (log pi_j - log ref_j - RKL)
///            = it * pi_j (t_j - w / sx),  t_j = (x_j - cx) - (y_j - cy),
/// written as g = scale * dRKL/dz. The gradient pass reads z and z_ref again and computes
/// pi_j again: kept exponentials would spare that exponential but not the reads, and were
/// no faster (docs/performance.md, "Prefetching").
template <class S, class T = compute_t<S>>
row_result reverse_row(const S* z, const S* zr, Index V, T it, bool log_probs, double scale,
                       T* g) {
  const online_state<T> state = first_pass<true, true>(z, zr, V, it, log_probs);
  if (!std::isfinite(state.lse_x()) || state.sx == 0) return {0, row_bad_z};
  if (!std::isfinite(state.lse_y()) || state.sy == 0) return {0, row_bad_ref};
  const double value = kl_of(state);
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  if (!std::isfinite(value)) return {value, row_infinite_rkl};
  const T cx = state.cx, cy = state.cy, lsx = T(state.log_sx()), K = T(state.w / state.sx);
  const T c = T(scale) * it;
  write_row(g, V, [&](auto tag, Index i) {
    using P = decltype(tag);
    const P X = shifted_at<P>(z, i, it, cx);
    const P Y = shifted_at<P>(zr, i, it, cy);
    const P p = v_exp(ei::psub(X, splat<P>(lsx)));
    const P t = ei::psub(ei::psub(X, Y), splat<P>(K));
    return where_positive(p, ei::pmul(splat<P>(c), ei::pmul(p, t)));
  });
  return {value, row_ok};
}

/// FKL of a row and, with g, its gradient dFKL/dz_j = it * (pi_j - ref_j), written as
/// g = scale * dFKL/dz. The first pass runs with the roles swapped (x = z_ref, y = z). With
/// a workspace the gradient pass reads pi and ref from the kept exponentials (and neither
/// row again), else it computes them again.
template <class S, class T = compute_t<S>>
row_result forward_row(const S* z, const S* zr, Index V, T it, bool log_probs, double scale,
                       T* g, T* kept = nullptr) {
  const online_state<T> state =
      first_pass_keeping<true>(zr, z, V, it, log_probs, g ? kept : nullptr);
  if (!std::isfinite(state.lse_y()) || state.sy == 0) return {0, row_bad_z};
  if (!std::isfinite(state.lse_x()) || state.sx == 0) return {0, row_bad_ref};
  const double value = kl_of(state);
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  const T c = T(scale) * it;
  if (kept && !log_probs) {
    // x is z_ref here: its kept exponentials give ref, y's give pi.
    write_from_kept(g, kept, V, state, streams<T>(V),
                    [&](auto tag, Index, const auto& r, const auto& p) {
                      using P = decltype(tag);
                      return ei::pmul(splat<P>(c), ei::psub(p, r));
                    });
    return {value, row_ok};
  }
  const T cz = state.cy, cr = state.cx, lsz = T(state.log_sy()), lsr = T(state.log_sx());
  write_row(g, V, [&](auto tag, Index i) {
    using P = decltype(tag);
    const P lp = log_softmax_at<P>(z, i, it, cz, lsz);
    const P lr = log_softmax_at<P>(zr, i, it, cr, lsr);
    // Eigen's exp without v_exp's zero below exp_floor: below its own clamp Eigen returns
    // one and the same number for every argument, -inf included (0, or a denormal on some
    // instruction sets), so p - r is exact where both underflow and off by less than the
    // smallest normal number where one does.
    const P p = pexp_or_exp(lp), r = pexp_or_exp(lr);
    return ei::pmul(splat<P>(c), ei::psub(p, r));
  });
  return {value, row_ok};
}

/// Generalised Jensen-Shannon of a row, M = lambda ref + (1 - lambda) pi:
///   JSD = lambda sum ref (log ref - log M) + (1 - lambda) sum pi (log pi - log M).
/// Since dJSD/dpi_j = (1 - lambda) log(pi_j / M_j) (the other terms cancel), through the
/// softmax
///   dJSD/dz_j = it (1 - lambda) pi_j (u_j - U),  u_j = log pi_j - log M_j,
///   U = sum pi u = KL(pi || M),
/// the RKL gradient with ref replaced by M, times (1 - lambda). Pass 1 gives the two
/// log-sum-exps, pass 2 the value (and u into g), pass 3 the gradient. With g over z
/// itself and no kept exponentials, pass 3 reads z again: pass 2 then only sums, and pass 3
/// computes u again from z and z_ref at the entry it writes.
template <class S, class T = compute_t<S>>
row_result jensen_shannon_row(const S* z, const S* zr, Index V, T it, bool log_probs,
                              double lambda, double scale, T* g, T* kept = nullptr) {
  // With a workspace, the first pass keeps both rows' exponentials (online_pass) and the
  // later passes read pi and ref from it instead of computing them again: 2 V exponentials
  // per row instead of 4 V (5 V with the gradient).
  const bool keep = kept && !log_probs;
  const online_state<T> state = first_pass_keeping<false>(z, zr, V, it, log_probs, kept);
  if (!std::isfinite(state.lse_x()) || state.sx == 0) return {0, row_bad_z};
  if (!std::isfinite(state.lse_y()) || state.sy == 0) return {0, row_bad_ref};
  const T cx = state.cx, cy = state.cy, lsx = T(state.log_sx()), lsy = T(state.log_sy());
  const T lam = T(lambda), mu = T(1 - lambda), tiny = std::numeric_limits<T>::min();
  // u into g unless g is z itself and pass 3 reads z again (captured by value: GCC then
  // tests it once, not per packet after each store).
  T* const u_out = keep || !writes_over(z, g) ? g : nullptr;
  // The terms of entries i.. given pi and ref there (p, q): u = log pi - log M into u_out
  // (and returned), and p u, q v into the sums.
  auto terms = [&, u_out](auto* acc, Index i, const auto& p, const auto& q) {
    using P = std::remove_pointer_t<decltype(acc)>;
    const P lp = log_softmax_at<P>(z, i, it, cx, lsx);
    const P lr = log_softmax_at<P>(zr, i, it, cy, lsy);
    // Where exp(lp) is not normal u is 0, so p u is 0 (no 0 * -inf), and p adds at most a
    // denormal to M, which is clamped to the smallest normal number for log_of_normal;
    // likewise v and q.
    const P m = ei::pmax(ei::pmadd(splat<P>(lam), q, ei::pmul(splat<P>(mu), p)), splat<P>(tiny));
    const P lm = log_of_normal(m);
    const P u = where_exp_normal(lp, ei::psub(lp, lm)), v = where_exp_normal(lr, ei::psub(lr, lm));
    if (u_out) store(u_out, i, u);
    acc[0] = ei::pmadd(p, u, acc[0]);
    acc[1] = ei::pmadd(q, v, acc[1]);
    return u;
  };
  double U = 0, Kr = 0;
  if (keep) {
    for_kept_blocks(kept, V, state, [&](Index b0, Index n, T fx, T fy) {
      const auto r = reduce_row<T, 2>(n, [&](auto* acc, Index j) {
        using P = std::remove_pointer_t<decltype(acc)>;
        const Index i = b0 + j;
        terms(acc, i, ei::pmul(load_ahead<P>(kept, i), splat<P>(fx)),
              ei::pmul(load_ahead<P>(kept + V, i), splat<P>(fy)));
      });
      U += r[0];
      Kr += r[1];
    });
  } else {
    const auto r = reduce_row<T, 2>(V, [&](auto* acc, Index i) {
      using P = std::remove_pointer_t<decltype(acc)>;
      // Eigen's exp as it is (0 or a denormal below its clamp).
      terms(acc, i, pexp_or_exp(log_softmax_at<P>(z, i, it, cx, lsx)),
            pexp_or_exp(log_softmax_at<P>(zr, i, it, cy, lsy)));
    });
    U = r[0];
    Kr = r[1];
  }
  const double value = lambda * Kr + (1 - lambda) * U;
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  const T c = T(scale * (1 - lambda)) * it, Ut = T(U);
  if (keep) {
    // Ordinary stores: each line of g is read (u) before it is written, so it is in cache.
    write_from_kept(g, kept, V, state, false,
                    [&](auto tag, Index i, const auto& p, const auto&) {
                      using P = decltype(tag);
                      const P u = load_ahead<P>(g, i);
                      return ei::pmul(splat<P>(c), ei::pmul(p, ei::psub(u, splat<P>(Ut))));
                    });
    return {value, row_ok};
  }
  // u_at(P{}, i): u at entries i.., stored by pass 2 or computed again.
  auto gradient = [&](auto u_at) {
    write_row(g, V, [&](auto tag, Index i) {
      using P = decltype(tag);
      const P u = u_at(tag, i);
      const P p = v_exp(log_softmax_at<P>(z, i, it, cx, lsx));
      return ei::pmul(splat<P>(c), ei::pmul(p, ei::psub(u, splat<P>(Ut))));
    });
  };
  if (u_out)
    gradient([&](auto tag, Index i) { return load<decltype(tag)>(g, i); });
  else
    gradient([&](auto tag, Index i) {  // pass 2's u again; its sums are dropped
      using P = decltype(tag);
      P dropped[2] = {splat<P>(T(0)), splat<P>(T(0))};
      return terms(dropped, i, pexp_or_exp(log_softmax_at<P>(z, i, it, cx, lsx)),
                   pexp_or_exp(log_softmax_at<P>(zr, i, it, cy, lsy)));
    });
  return {value, row_ok};
}

}  // namespace klgrad::detail
