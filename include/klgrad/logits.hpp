// Exact per-state divergences between the policy's and the reference's full softmax rows
// (reverse KL, forward KL, generalised Jensen-Shannon) and their exact gradients with
// respect to the policy logits, streamed one row at a time; the top-k forms are in
// logits_top_k.hpp, included at the end.
#pragma once

#include "aggregation.hpp"
#include "batch.hpp"
#include "errors.hpp"
#include "normal_log.hpp"
#include "streaming.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#include <omp.h>
#endif

namespace klgrad {

/// Which divergence between pi = softmax(z / tau) and ref = softmax(z_ref / tau) a row gets.
enum class divergence {
  reverse_kl,     ///< RKL = KL(pi || ref) = sum pi (log pi - log ref)
  forward_kl,     ///< FKL = KL(ref || pi) = sum ref (log ref - log pi)
  jensen_shannon  ///< JSD_lambda = lambda KL(ref || M) + (1 - lambda) KL(pi || M),
                  ///< M = lambda ref + (1 - lambda) pi
};

inline constexpr std::string_view to_string(divergence d) {
  switch (d) {
    case divergence::reverse_kl: return "reverse-kl";
    case divergence::forward_kl: return "forward-kl";
    case divergence::jensen_shannon: return "jensen-shannon";
  }
  return "?";
}

/// Settings of a full-vocabulary call.
struct logits_options {
  double temperature = 1.0;  ///< tau, dividing both z and z_ref
  /// JSD mixing weight: the reference's share of M (the GKD paper's and TRL's beta);
  /// 0 < lambda < 1. JSD / lambda -> FKL as lambda -> 0, JSD / (1 - lambda) -> RKL as
  /// lambda -> 1.
  double lambda = 0.5;
  /// The rows hold normalised log-probabilities (log_softmax already applied) instead of
  /// logits: the log-sum-exp is skipped (it is 0), temperature must be 1, and gradients are
  /// with respect to the logits those log-probabilities came from.
  bool log_probs = false;
  klgrad::aggregation aggregation = aggregation::token_mean;
  /// L of the -norm modes, the epsilons added to the counts, the scale: as the spec keys
  /// agg-norm, agg-eps, agg-seq-eps and agg-scale (aggregation.hpp).
  klgrad::aggregation_constants aggregation_constants;
  double beta = 1.0;
  batch_counts counts;  ///< global N_tokens / B_nonempty (data-parallel shards)
  /// Optional, Jensen-Shannon only: caller-owned memory of `workspace_size` elements of z's
  /// scalar type, at least jensen_shannon_workspace_size<T>(V) (one slice per OpenMP
  /// thread). With it the kernel keeps each row's exponentials between its passes instead
  /// of computing them again; without it (nullptr) it runs without one. Never allocated by
  /// the kernel; other divergences ignore it.
  void* workspace = nullptr;
  Index workspace_size = 0;
};

/// The threads a full-vocabulary call runs its rows on: OpenMP's with KLGRAD_OPENMP, else 1.
inline int logits_threads() {
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// What a full-vocabulary call returns besides the per-row arrays.
struct logits_summary {
  double loss = 0;       ///< beta * sum_rows a_{b,t} * value: this batch's share of the loss
  double mean = 0;       ///< mean value over valid rows
  Index rows = 0;        ///< valid rows
  Index sequences = 0;   ///< non-empty sequences
};

/// Elements of T the Jensen-Shannon workspace needs for rows of V entries on `threads`
/// threads: per thread both rows' exponentials (2 V) and two shifts per 8 KiB block.
template <class T>
Index jensen_shannon_workspace_size(Index V, int threads = logits_threads()) {
  return Index(threads) * detail::kept_size<T>(V);
}

/// N rows of policy and reference logits (N x V, row-major), seen as a padded batch of
/// B sequences of T positions (N = B * T) with an optional B x T mask (nonzero = valid).
/// Masked rows are never read.
template <class T, class M = T>
struct logit_batch {
  using scalar = T;
  using mask_scalar = M;
  detail::strided_rows<const T> z, ref;
  detail::strided_rows<const M> mask;  ///< B x T, or absent
  Index sequences = 1;                 ///< B
  Index positions = 0;                 ///< T

  Index rows() const { return z.rows; }
  Index vocabulary() const { return z.cols; }
  bool valid(Index r) const {
    return !mask.present() || mask.row(r / positions)[r % positions] != M(0);
  }
};

/// Rows z and z_ref (N x V) forming B = N / positions sequences of `positions` rows each
/// (positions = 0: one sequence of N rows); every row valid.
template <class Z, class R>
auto logit_rows(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<R>& z_ref,
                Index positions = 0) {
  using T = std::remove_const_t<typename Z::Scalar>;
  static_assert(std::is_same_v<T, std::remove_const_t<typename R::Scalar>>,
                "klgrad: z and z_ref differ in type");
  static_assert(std::is_floating_point_v<T>, "klgrad: logits must be float or double");
  logit_batch<T, T> b;
  b.z = detail::rows_of(z, "z");
  b.ref = detail::rows_of(z_ref, "z_ref");
  detail::require_same_shape(b.z, "z", b.ref, "z_ref");
  const Index n = b.z.rows;
  if (positions < 0 || (positions > 0 && n % positions != 0))
    detail::raise<shape_error>(detail::cat("shape mismatch: z has ", n,
                                           " rows, not a multiple of positions = ", positions));
  b.positions = positions > 0 ? positions : n;
  b.sequences = b.positions > 0 ? n / b.positions : 0;
  if (n == 0) b.positions = 1;
  return b;
}

/// Rows z and z_ref (N x V, N = B * T) of a padded batch with a B x T mask (row-major, any
/// arithmetic type, nonzero = valid). Masked rows are never read, whatever they hold.
template <class Z, class R, class K>
auto logit_rows(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<R>& z_ref,
                const Eigen::DenseBase<K>& mask) {
  using T = std::remove_const_t<typename Z::Scalar>;
  using M = std::remove_const_t<typename K::Scalar>;
  static_assert(std::is_arithmetic_v<M>, "klgrad: the mask must be of arithmetic type");
  const auto all = logit_rows(z, z_ref);
  logit_batch<T, M> b;
  b.z = all.z;
  b.ref = all.ref;
  b.mask = detail::rows_of(mask, "mask");
  if (b.mask.rows * b.mask.cols != b.z.rows)
    detail::raise<shape_error>(detail::cat(
        "shape mismatch: z is ", detail::shape_text(b.z.rows, b.z.cols), " (N = ", b.z.rows,
        " rows) but mask is ", detail::shape_text(b.mask.rows, b.mask.cols),
        "; a B x T mask needs N = B * T"));
  b.sequences = b.mask.rows;
  b.positions = b.mask.cols;
  if (b.positions == 0) b.positions = 1;
  return b;
}

namespace detail {

/// What a row kernel reports besides its value.
enum row_status : int {
  row_ok = 0,
  row_bad_z = 1,         ///< z's row has a NaN / +inf, or no finite entry
  row_bad_ref = 2,       ///< the same for z_ref
  row_infinite_rkl = 3,  ///< gradient asked where RKL = +inf (pi > 0 where ref = 0)
  row_nan = 4,           ///< a NaN value: look for the bad entry in both rows
};
inline constexpr Index row_status_count = 8;

struct row_result {
  double value;
  int status;
};

/// Runs row(r, scale, grad_row) -> row_result over the valid rows, writes values, zeroes
/// masked rows (value and gradient), applies the aggregation and raises for the first bad
/// row. scale = beta * a_{b,t}; grad_row is nullptr without a gradient.
template <class T, class M, class RowFn>
logits_summary run_rows(const logit_batch<T, M>& b, T* value, const strided_rows<T>* grad,
                        const logits_options& opt, RowFn&& row) {
  const Index V = b.vocabulary(), P = b.positions;
  const std::string why =
      aggregation_problem(opt.aggregation, opt.aggregation_constants,
                          {"aggregation=", "aggregation_constants.norm=",
                           "aggregation_constants.eps=", "aggregation_constants.seq_eps=",
                           "aggregation_constants.scale="});
  if (!why.empty()) raise<input_error>("logits_options: " + why);
  auto count = [&](Index s) {
    if (!b.mask.present()) return P;
    const M* m = b.mask.row(s);
    Index n = 0;
    for (Index t = 0; t < P; ++t) n += m[t] != M(0);
    return n;
  };
  Index tokens = 0, sequences = 0;
  for (Index s = 0; s < b.sequences; ++s) {
    const Index n = count(s);
    tokens += n;
    sequences += n > 0;
  }
  check_counts(opt.counts, tokens, sequences);
  const Index n_tokens = opt.counts.tokens >= 0 ? opt.counts.tokens : tokens;
  const Index n_sequences = opt.counts.sequences >= 0 ? opt.counts.sequences : sequences;

  // Rows run in chunks of `chunk`: the rows of a chunk in parallel with KLGRAD_OPENMP (each
  // row is computed whole by one thread), their values kept in `part`; then the chunk's
  // values are added to the sums in row order. The loss and the mean are thus the same, bit
  // for bit, with any number of threads and without OpenMP (no reduction across threads
  // whose order would depend on the schedule), and nothing is allocated.
  constexpr Index chunk = 256;
  double part[chunk], chunk_scale[chunk];
  const Index N = b.sequences * P;
  Index seq = -1;
  double seq_scale = 0;  // beta * a_{b,t} of sequence seq
  const double largest_scale =
      double(std::numeric_limits<T>::max()) * std::min(1.0, opt.temperature);
  double loss = 0, total = 0;
  Index first_bad = std::numeric_limits<Index>::max();  // row_status_count * row + status
  for (Index c0 = 0; c0 < N; c0 += chunk) {
    const Index n = std::min(chunk, N - c0);
    for (Index i = 0; i < n; ++i) {
      const Index s = (c0 + i) / P;
      if (s != seq) {
        seq = s;
        const Index n_b = count(s);
        // Saturated so that the kernels' T(scale) / temperature stays finite (an inf
        // factor times a gradient's 0 would be NaN): beta=1e308 with float logits.
        seq_scale = n_b > 0 ? std::min(opt.beta * aggregation_weight(opt.aggregation,
                                                                     opt.aggregation_constants,
                                                                     n_b, n_tokens, n_sequences),
                                       largest_scale)
                            : 0.0;
      }
      chunk_scale[i] = seq_scale;
    }
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(min : first_bad)
#endif
    for (Index i = 0; i < n; ++i) {
      const Index r = c0 + i;
      part[i] = 0;
      T* g = grad ? grad->row(r) : nullptr;
      if (!b.valid(r)) {
        value[r] = T(0);
        if (g) std::fill(g, g + V, T(0));
        continue;
      }
      const row_result out = row(r, chunk_scale[i], g);
      if (out.status != row_ok) {
        first_bad = std::min(first_bad, row_status_count * r + out.status);
        continue;
      }
      value[r] = T(out.value);
      part[i] = out.value;
    }
    for (Index i = 0; i < n; ++i) {  // in row order, whatever the threads did
      if (!b.valid(c0 + i)) continue;
      total += part[i];
      loss += chunk_scale[i] * part[i];
    }
  }
  if (first_bad != std::numeric_limits<Index>::max()) {
    const Index r = first_bad / row_status_count;
    const int status = int(first_bad % row_status_count);
    const Index place = b.mask.present() || b.sequences > 1 ? P : 0;
    if (status == row_bad_z || (status == row_nan && first_invalid(b.z.row(r), V) >= 0))
      report_bad_row(b.z.row(r), V, "z", r, place);
    if (status == row_bad_ref || status == row_nan)
      report_bad_row(b.ref.row(r), V, "z_ref", r, place);
    input_error e(cat("z_ref ", row_place(r, place),
                      " gives zero probability (a -inf logit) to an entry where pi is "
                      "positive: RKL = +inf and its gradient is undefined"),
                  input_reason::zero_reference, "z_ref");
    locate_row(e, r, place);
    raise(e);
  }
  logits_summary sum;
  sum.loss = loss;
  sum.rows = tokens;
  sum.sequences = sequences;
  sum.mean = tokens > 0 ? total / double(tokens) : 0.0;
  return sum;
}

/// The caller's Jensen-Shannon workspace as T*, checked: nullptr when there is none.
template <class T>
T* jensen_shannon_workspace(const logits_options& opt, Index V) {
  if (!opt.workspace) return nullptr;
  const Index need = jensen_shannon_workspace_size<T>(V);
  if (opt.workspace_size < need) {
    input_error e(cat("logits_options.workspace_size = ", opt.workspace_size,
                      " elements, but jensen-shannon on rows of ", V, " entries with ",
                      logits_threads(), " thread(s) needs ", need,
                      " (jensen_shannon_workspace_size<T>(V)); pass a larger workspace, or "
                      "none"),
                  input_reason::too_large, "workspace");
    e.value = double(opt.workspace_size) * double(sizeof(T));  // bytes, as too_large's limit
    e.limit = double(need) * double(sizeof(T));
    raise(e);
  }
  if (reinterpret_cast<std::uintptr_t>(opt.workspace) % alignof(T) != 0)
    raise<input_error>(cat("logits_options.workspace is not aligned to ", alignof(T),
                           " bytes, the alignment of z's scalar type"));
  return static_cast<T*>(opt.workspace);
}

/// This thread's slice of a Jensen-Shannon workspace (nullptr without one).
template <class T>
T* thread_slice(T* work, Index V) {
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
  if (work) return work + Index(omp_get_thread_num()) * kept_size<T>(V);
#else
  (void)V;
#endif
  return work;
}

template <class T, class M>
void check_options(const logit_batch<T, M>&, const logits_options& opt) {
  check_temperature(opt.temperature);
  if (opt.log_probs && opt.temperature != 1.0)
    raise<input_error>(cat("temperature ", opt.temperature,
                           " given with log_probs = true: a temperature divides logits; "
                           "normalised log-probabilities take temperature 1"));
}

template <class T, class M, class D>
T* value_output(const logit_batch<T, M>& b, const Eigen::DenseBase<D>& value) {
  static_assert(std::is_same_v<typename D::Scalar, T>, "klgrad: value must have z's type");
  return const_cast<T*>(flat_of(value, "value", b.rows(), b.z.rows, b.z.cols));
}

template <class T, class M, class D>
strided_rows<T> grad_output(const logit_batch<T, M>& b, const Eigen::DenseBase<D>& grad) {
  static_assert(std::is_same_v<typename D::Scalar, T>, "klgrad: grad must have z's type");
  const auto v = rows_of(grad, "grad");
  require_same_shape(b.z, "z", v, "grad");
  return {const_cast<T*>(v.data), v.rows, v.cols, v.stride};
}

/// The first pass over a row pair: online for logits, plain for log-probabilities.
template <bool HasY, bool Weighted, class T>
online_state<T> first_pass(const T* x, const T* y, Index V, T it, bool log_probs) {
  if (log_probs) {
    if constexpr (Weighted) return normalized_pass<true>(x, y, V);
    online_state<T> s = normalized_pass<false>(x, y, V);
    if constexpr (HasY) s.sy = normalized_pass<false>(y, y, V).sx;
    return s;
  }
  return online_pass<HasY, Weighted>(x, y, V, it);
}

/// KL(softmax(x) || softmax(y)) of one row, x = xs * it, y = ys * it, from the first pass:
/// w / sx - log sx + log sy.
template <class T>
double kl_of(const online_state<T>& s) {
  return s.w / s.sx - s.log_sx() + s.log_sy();
}

/// RKL of a row (pi = softmax(z it), ref = softmax(z_ref it)) and, with g, its gradient
///   dRKL/dz_j = it * pi_j (log pi_j - log ref_j - RKL)
///            = it * pi_j (t_j - w / sx),  t_j = (x_j - cx) - (y_j - cy),
/// written as g = scale * dRKL/dz.
template <class T>
row_result reverse_row(const T* z, const T* zr, Index V, T it, bool log_probs, double scale,
                       T* g) {
  const online_state<T> s = first_pass<true, true>(z, zr, V, it, log_probs);
  if (!std::isfinite(s.lse_x()) || s.sx == 0) return {0, row_bad_z};
  if (!std::isfinite(s.lse_y()) || s.sy == 0) return {0, row_bad_ref};
  const double value = kl_of(s);
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  if (!std::isfinite(value)) return {value, row_infinite_rkl};
  const T cx = s.cx, cy = s.cy, lsx = T(s.log_sx()), K = T(s.w / s.sx);
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
/// g = scale * dFKL/dz. The first pass runs with the roles swapped (x = z_ref, y = z).
template <class T>
row_result forward_row(const T* z, const T* zr, Index V, T it, bool log_probs, double scale,
                       T* g) {
  const online_state<T> s = first_pass<true, true>(zr, z, V, it, log_probs);
  if (!std::isfinite(s.lse_y()) || s.sy == 0) return {0, row_bad_z};
  if (!std::isfinite(s.lse_x()) || s.sx == 0) return {0, row_bad_ref};
  const double value = kl_of(s);
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  const T cz = s.cy, cr = s.cx, lsz = T(s.log_sy()), lsr = T(s.log_sx());
  const T c = T(scale) * it;
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
/// log-sum-exps, pass 2 the value (and u into g), pass 3 the gradient.
template <class T>
row_result jensen_shannon_row(const T* z, const T* zr, Index V, T it, bool log_probs,
                              double lambda, double scale, T* g, T* kept = nullptr) {
  // With a workspace, the first pass keeps both rows' exponentials (online_pass) and the
  // later passes read pi and ref from it instead of computing them again: 2 V exponentials
  // per row instead of 4 V (5 V with the gradient).
  const bool keep = kept && !log_probs;
  online_state<T> s = keep ? online_pass<true, false, true>(z, zr, V, it, kept)
                           : first_pass<true, false>(z, zr, V, it, log_probs);
  if (!std::isfinite(s.lse_x()) || s.sx == 0) return {0, row_bad_z};
  if (!std::isfinite(s.lse_y()) || s.sy == 0) return {0, row_bad_ref};
  const T cx = s.cx, cy = s.cy, lsx = T(s.log_sx()), lsy = T(s.log_sy());
  const T lam = T(lambda), mu = T(1 - lambda), tiny = std::numeric_limits<T>::min();
  // The terms of entries i.. given pi and ref there (p, q): u = log pi - log M into g,
  // and p u, q v into the sums.
  auto terms = [&](auto* acc, Index i, const auto& p, const auto& q) {
    using P = std::remove_pointer_t<decltype(acc)>;
    const P lp = log_softmax_at<P>(z, i, it, cx, lsx);
    const P lr = log_softmax_at<P>(zr, i, it, cy, lsy);
    // Where exp(lp) is not normal u is 0, so p u is 0 (no 0 * -inf), and p adds at most a
    // denormal to M, which is clamped to the smallest normal number for log_of_normal;
    // likewise v and q.
    const P m = ei::pmax(ei::pmadd(splat<P>(lam), q, ei::pmul(splat<P>(mu), p)), splat<P>(tiny));
    const P lm = log_of_normal(m);
    const P u = where_exp_normal(lp, ei::psub(lp, lm)), v = where_exp_normal(lr, ei::psub(lr, lm));
    if (g) store(g, i, u);
    acc[0] = ei::pmadd(p, u, acc[0]);
    acc[1] = ei::pmadd(q, v, acc[1]);
  };
  double U = 0, Kr = 0;
  if (keep) {
    for (Index b0 = 0, b = 0; b0 < V; b0 += stream_block<T>, ++b) {
      // Plain copies, not structured bindings: C++17 lambdas cannot capture those.
      const std::pair<T, T> factors = kept_scale(kept, V, b, s);
      const T fx = factors.first, fy = factors.second;
      const auto r = reduce_row<T, 2>(std::min(stream_block<T>, V - b0), [&](auto* acc, Index j) {
        using P = std::remove_pointer_t<decltype(acc)>;
        const Index i = b0 + j;
        terms(acc, i, ei::pmul(load<P>(kept, i), splat<P>(fx)),
              ei::pmul(load<P>(kept + V, i), splat<P>(fy)));
      });
      U += r[0];
      Kr += r[1];
    }
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
    for (Index b0 = 0, b = 0; b0 < V; b0 += stream_block<T>, ++b) {
      const T fx = kept_scale(kept, V, b, s).first;
      T* gb = g + b0;
      const T* pb = kept + b0;
      write_row(gb, std::min(stream_block<T>, V - b0), [&](auto tag, Index j) {
        using P = decltype(tag);
        const P p = ei::pmul(load<P>(pb, j), splat<P>(fx));
        return ei::pmul(splat<P>(c), ei::pmul(p, ei::psub(load<P>(gb, j), splat<P>(Ut))));
      });
    }
    return {value, row_ok};
  }
  write_row(g, V, [&](auto tag, Index i) {
    using P = decltype(tag);
    const P p = v_exp(log_softmax_at<P>(z, i, it, cx, lsx));
    return ei::pmul(splat<P>(c), ei::pmul(p, ei::psub(load<P>(g, i), splat<P>(Ut))));
  });
  return {value, row_ok};
}


}  // namespace detail

/// Per-row divergence between pi = softmax(z / tau) and ref = softmax(z_ref / tau) for every
/// valid row of the batch (see `divergence`). Writes value (N entries, any contiguous shape
/// such as N or B x T): the unscaled divergence, 0 for masked rows. Returns the loss
/// beta * sum a_{b,t} value_{b,t} and counts. One streaming pass per row (two for JSD).
template <class T, class M, class V>
logits_summary logits_divergence(divergence d, const logit_batch<T, M>& batch,
                                 const Eigen::DenseBase<V>& value,
                                 const logits_options& opt = {}) {
  detail::check_options(batch, opt);
  if (d == divergence::jensen_shannon && !(opt.lambda > 0 && opt.lambda < 1))
    detail::raise<input_error>(detail::cat("jensen-shannon needs 0 < lambda < 1, got ",
                                           opt.lambda, " (lambda -> 0 gives lambda * FKL, "
                                           "lambda -> 1 gives (1 - lambda) * RKL; use those)"));
  T* out = detail::value_output(batch, value);
  const Index Vn = batch.vocabulary();
  const T it = T(1.0 / opt.temperature);
  const bool lp = opt.log_probs;
  T* const work = d == divergence::jensen_shannon
                      ? detail::jensen_shannon_workspace<T>(opt, Vn)
                      : static_cast<T*>(nullptr);
  auto rows = [&](auto kernel) {
    return detail::run_rows(batch, out, static_cast<const detail::strided_rows<T>*>(nullptr), opt, [&](Index r, double, T*) {
      return kernel(batch.z.row(r), batch.ref.row(r));
    });
  };
  switch (d) {
    case divergence::reverse_kl:
      return rows([&](const T* z, const T* zr) {
        return detail::reverse_row(z, zr, Vn, it, lp, 0.0, static_cast<T*>(nullptr));
      });
    case divergence::forward_kl:
      return rows([&](const T* z, const T* zr) {
        return detail::forward_row(z, zr, Vn, it, lp, 0.0, static_cast<T*>(nullptr));
      });
    case divergence::jensen_shannon:
      return rows([&](const T* z, const T* zr) {
        return detail::jensen_shannon_row(z, zr, Vn, it, lp, opt.lambda, 0.0,
                                          static_cast<T*>(nullptr),
                                          detail::thread_slice(work, Vn));
      });
  }
  return {};
}

/// The same, and the exact gradient of the batch loss with respect to z:
/// grad (N x V, z's shape) = beta * a_{b,t} * d value_{b,t} / d z_{b,t}, zero for masked
/// rows, with
///   RKL: pi (log pi - log ref - RKL) / tau,   FKL: (pi - ref) / tau,
///   JSD: (1 - lambda) pi (log pi - log M - KL(pi || M)) / tau.
/// This is the per-state ("part 1") gradient of SPEC section 5: each state's distribution is
/// differentiated with the states held fixed. A second pass per row writes the gradient.
template <class T, class M, class V, class G>
logits_summary logits_divergence(divergence d, const logit_batch<T, M>& batch,
                                 const Eigen::DenseBase<V>& value, const Eigen::DenseBase<G>& grad,
                                 const logits_options& opt = {}) {
  detail::check_options(batch, opt);
  if (d == divergence::jensen_shannon && !(opt.lambda > 0 && opt.lambda < 1))
    detail::raise<input_error>(detail::cat("jensen-shannon needs 0 < lambda < 1, got ",
                                           opt.lambda));
  T* out = detail::value_output(batch, value);
  const auto go = detail::grad_output(batch, grad);
  const Index Vn = batch.vocabulary();
  const T it = T(1.0 / opt.temperature);
  const bool lp = opt.log_probs;
  T* const work = d == divergence::jensen_shannon
                      ? detail::jensen_shannon_workspace<T>(opt, Vn)
                      : static_cast<T*>(nullptr);
  auto rows = [&](auto kernel) {
    return detail::run_rows(batch, out, &go, opt, [&](Index r, double scale, T* g) {
      return kernel(batch.z.row(r), batch.ref.row(r), scale, g);
    });
  };
  switch (d) {
    case divergence::reverse_kl:
      return rows([&](const T* z, const T* zr, double scale, T* g) {
        return detail::reverse_row(z, zr, Vn, it, lp, scale, g);
      });
    case divergence::forward_kl:
      return rows([&](const T* z, const T* zr, double scale, T* g) {
        return detail::forward_row(z, zr, Vn, it, lp, scale, g);
      });
    case divergence::jensen_shannon:
      return rows([&](const T* z, const T* zr, double scale, T* g) {
        return detail::jensen_shannon_row(z, zr, Vn, it, lp, opt.lambda, scale, g,
                                          detail::thread_slice(work, Vn));
      });
  }
  return {};
}

}  // namespace klgrad

#include "logits_top_k.hpp"
