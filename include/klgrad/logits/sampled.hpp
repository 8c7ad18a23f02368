// Fused sampled-token paths over full logits: the selective log-softmax log pi(y_t) of the
// sampled ids, and the back-propagation of per-token coefficients to the logits, without
// materialising a softmax anywhere but in the output row.
#pragma once

#include "../support/errors.hpp"
#include "../views/batch.hpp"
#include "streaming.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace klgrad {

namespace detail {

/// Raises for the first valid row whose id is outside [0, V).
template <class T, class Y, class K>
void check_ids(const sampled_rows<T, Y, K>& v) {
  for (Index r = 0; r < v.z.rows; ++r)
    if (v.valid(r) && (v.ids[r] < Y(0) || Index(v.ids[r]) >= v.z.cols))
      raise<input_error>(cat("ids ", row_place(r, v.positions), " is ", Index(v.ids[r]),
                             ", outside the vocabulary [0, ", v.z.cols, ")"));
}

/// One row's online log-sum-exp state.
template <class S>
online_state<compute_t<S>> row_lse(const S* z, Index V, compute_t<S> it) {
  return online_pass<false, false>(z, z, V, it);
}

/// The row loop both sampled paths share: for each row r of v, masked(r) when r is masked,
/// else body(r, z_r, state) with the row's online log-sum-exp state at inverse temperature
/// it. A row of no finite logit (an LSE that is not finite) is skipped, and the first such
/// row is reported after the loop (input_error naming it), as the other logits paths do.
template <class S, class Y, class K, class T, class Masked, class Body>
void for_each_row_lse(const sampled_rows<S, Y, K>& v, T it, Masked masked, Body body) {
  const Index N = v.z.rows, V = v.z.cols;
  Index first_bad = std::numeric_limits<Index>::max();
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(min : first_bad)
#endif
  for (Index r = 0; r < N; ++r) {
    if (!v.valid(r)) {
      masked(r);
      continue;
    }
    const S* z = v.z.row(r);
    const online_state<T> state = row_lse(z, V, it);
    if (!std::isfinite(state.lse_x())) {
      first_bad = std::min(first_bad, r);
      continue;
    }
    body(r, z, state);
  }
  if (first_bad != std::numeric_limits<Index>::max())
    report_bad_row(v.z.row(first_bad), V, "z", first_bad, v.positions);
}

/// Logits stored as S (float, double, bf16, fp16); logp, coefficients and gradients in
/// T = compute_t<S>.
template <class S, class Y, class K, class T = compute_t<S>>
void selective_log_softmax(const sampled_rows<S, Y, K>& v, T* logp, T it) {
  check_ids(v);
  for_each_row_lse(
      v, it, [&](Index r) { logp[r] = T(0); },
      [&](Index r, const S* z, const online_state<T>& state) {
        // (z_y it - c) - log s keeps the shift out of the rounding of the difference.
        logp[r] = T((double(widen(z[Index(v.ids[r])]) * it) - double(state.cx)) -
                    state.log_sx());
      });
}

template <class S, class Y, class K, class T = compute_t<S>>
void sampled_gradient(const sampled_rows<S, Y, K>& v, const T* coef, const strided_rows<T>& grad,
                      T it) {
  check_ids(v);
  const Index V = v.z.cols;
  for (Index r = 0; r < v.z.rows; ++r)
    if (v.valid(r) && !std::isfinite(coef[r])) {
      input_error e(cat("coef ", row_place(r, v.positions), " is ", coef[r],
                        ", not finite, in a valid row"),
                    input_reason::nonfinite, "coef");
      locate_row(e, r, v.positions);
      e.value = double(coef[r]);
      raise(e);
    }
  for_each_row_lse(
      v, it, [&](Index r) { std::fill(grad.row(r), grad.row(r) + V, T(0)); },
      [&](Index r, const S* z, const online_state<T>& state) {
        T* g = grad.row(r);
        const T cx = state.cx, lsx = T(state.log_sx()), c = coef[r] * it;
        write_row(g, V, [&](auto tag, Index i) {
          using P = decltype(tag);
          return ei::pmul(splat<P>(-c), v_exp(log_softmax_at<P>(z, i, it, cx, lsx)));
        });
        g[Index(v.ids[r])] += c;
      });
}

template <class T, class D>
T* writable_flat(const Eigen::DenseBase<D>& x, const char* name, Index n, Index rows, Index cols) {
  static_assert(std::is_same_v<std::remove_const_t<typename D::Scalar>, T>,
                "klgrad: outputs must have the logits' scalar type (float for 16-bit logits)");
  return const_cast<T*>(flat_of(x, name, n, rows, cols));
}

/// The public selective_log_softmax with a mask or no_mask: both overloads' checks, once.
template <class Z, class D, class L, class Mask>
void selective_log_softmax_call(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                                const Eigen::DenseBase<L>& logp, const Mask& mask,
                                double temperature) {
  using T = compute_t<std::remove_const_t<typename Z::Scalar>>;
  const auto v = sampled_view(z, ids, mask, temperature);
  T* out = writable_flat<T>(logp, "logp", v.z.rows, v.z.rows, v.z.cols);
  selective_log_softmax(v, out, T(1.0 / temperature));
}

/// The public sampled_logits_gradient with a mask or no_mask: both overloads' checks, once.
template <class Z, class D, class C, class G, class Mask>
void sampled_logits_gradient_call(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                                  const Eigen::DenseBase<C>& coef, const Eigen::DenseBase<G>& grad,
                                  const Mask& mask, double temperature) {
  using T = compute_t<std::remove_const_t<typename Z::Scalar>>;
  const auto v = sampled_view(z, ids, mask, temperature);
  static_assert(std::is_same_v<std::remove_const_t<typename C::Scalar>, T>,
                "klgrad: coef must have the logits' scalar type (float for 16-bit logits)");
  const T* c = flat_of(coef, "coef", v.z.rows, v.z.rows, v.z.cols);
  const auto gv = rows_of(grad, "grad");
  require_same_shape(v.z, "z", gv, "grad");
  static_assert(std::is_same_v<std::remove_const_t<typename G::Scalar>, T>,
                "klgrad: grad must have the logits' scalar type (float for 16-bit logits)");
  sampled_gradient(v, c, strided_rows<T>{const_cast<T*>(gv.data), gv.rows, gv.cols, gv.stride},
                   T(1.0 / temperature));
}

}  // namespace detail

/// Selective log-softmax: logp_r = log softmax(z_r / tau)[ids_r] = z_{r,y} / tau - LSE(z_r / tau)
/// for every row of z (N x V, row-major), in one streaming pass per row, never forming the
/// softmax. ids and logp hold N entries (any contiguous shape, e.g. B x T). A token whose
/// logit is -inf gets -inf. Rows of all -inf, NaN or +inf logits raise input_error naming the
/// row; an id outside [0, V) raises input_error. z may hold float, double, or 16-bit logits
/// (Eigen::bfloat16, Eigen::half), which are widened to float as they are read: logp is then
/// float, and equals the float call's on the widened logits bit for bit.
template <class Z, class D, class L>
void selective_log_softmax(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                           const Eigen::DenseBase<L>& logp, double temperature = 1.0) {
  detail::selective_log_softmax_call(z, ids, logp, detail::no_mask{}, temperature);
}

/// The same with a mask of N entries (B x T for a padded batch; nonzero = valid): masked
/// rows are never read and get logp = 0.
template <class Z, class D, class L, class K>
void selective_log_softmax(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                           const Eigen::DenseBase<L>& logp, const Eigen::DenseBase<K>& mask,
                           double temperature = 1.0) {
  detail::selective_log_softmax_call(z, ids, logp, mask, temperature);
}

/// Back-propagates per-token coefficients c_r = d(loss)/d(log pi(y_r)) (klgrad's coef, or any
/// other) to the logits:
///   grad_r = c_r * d log softmax(z_r / tau)[y_r] / d z_r = c_r (onehot(y_r) - softmax(z_r / tau)) / tau,
/// written straight into grad (N x V, z's shape): a log-sum-exp pass, then one pass writing
/// the row; the softmax exists only as the output row. Non-finite coefficients in valid rows
/// raise input_error. For 16-bit z (Eigen::bfloat16, Eigen::half) coef and grad are float.
template <class Z, class D, class C, class G>
void sampled_logits_gradient(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                             const Eigen::DenseBase<C>& coef, const Eigen::DenseBase<G>& grad,
                             double temperature = 1.0) {
  detail::sampled_logits_gradient_call(z, ids, coef, grad, detail::no_mask{}, temperature);
}

/// The same with a mask of N entries: masked rows are never read (coef and z included) and
/// get a zero gradient row.
template <class Z, class D, class C, class G, class K>
void sampled_logits_gradient(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                             const Eigen::DenseBase<C>& coef, const Eigen::DenseBase<G>& grad,
                             const Eigen::DenseBase<K>& mask, double temperature = 1.0) {
  detail::sampled_logits_gradient_call(z, ids, coef, grad, mask, temperature);
}

}  // namespace klgrad
