// Exact per-state divergences between the policy's and the reference's full softmax rows
// (reverse KL, forward KL, generalised Jensen-Shannon) and their exact gradients with
// respect to the policy logits, streamed one row at a time: the public entry points. The
// settings are in logits/options.hpp, the row driver in logits/driver.hpp, the row kernels
// in logits/divergences.hpp, the top-k forms in logits/top_k.hpp, and
// the batch of logit rows in views/batch.hpp.
#pragma once

#include "logits/divergences.hpp"
#include "logits/driver.hpp"
#include "logits/options.hpp"
#include "logits/top_k.hpp"
#include "support/errors.hpp"
#include "views/batch.hpp"

#include <Eigen/Core>
#include <type_traits>

namespace klgrad {

namespace detail {

/// The rows of a full-vocabulary call through divergence d's row kernel: values into out,
/// and with Gradient the scaled gradients into go. Rows stored as S (16-bit too), computed
/// and written in T = compute_t<S>; grad is values_only or the gradient rows. Each
/// divergence gets its own run_rows, and the value path a gradient row that is nullptr at
/// compile time: a switch inside one row function made the value path 20% slower
/// (docs/performance.md, "Paired: stop 15").
template <class S, class M, class G, class T = compute_t<S>>
logits_summary divergence_rows(divergence d, const logit_batch<S, M>& batch, T* out,
                               const G& grad, const logits_options& opt) {
  constexpr bool Gradient = !std::is_same_v<G, values_only>;
  const strided_rows<T>* go = gradient_rows<T>(grad);
  check_options(batch, opt);
  if (d == divergence::jensen_shannon && !(opt.lambda > 0 && opt.lambda < 1))
    raise<input_error>(cat("jensen-shannon needs 0 < lambda < 1, got ", opt.lambda,
                           " (lambda -> 0 gives lambda * FKL, lambda -> 1 gives "
                           "(1 - lambda) * RKL; use those)"));
  const Index V = batch.vocabulary();
  const T it = T(1.0 / opt.temperature);
  const bool lp = opt.log_probs;
  T* const work = logits_workspace<T>(opt, V);
  auto rows = [&](auto kernel) {
    return run_rows(batch, out, go, opt, [&](Index r, double scale, T* g) {
      return kernel(batch.z.row(r), batch.ref.row(r), scale, Gradient ? g : nullptr);
    });
  };
  switch (d) {
    case divergence::reverse_kl:
      return rows([&](const S* z, const S* zr, double scale, T* g) {
        return reverse_row(z, zr, V, it, lp, scale, g);
      });
    case divergence::forward_kl:
      return rows([&](const S* z, const S* zr, double scale, T* g) {
        return forward_row(z, zr, V, it, lp, scale, g, thread_slice(work, V));
      });
    case divergence::jensen_shannon:
      return rows([&](const S* z, const S* zr, double scale, T* g) {
        return jensen_shannon_row(z, zr, V, it, lp, opt.lambda, scale, g, thread_slice(work, V));
      });
  }
  return {};
}

}  // namespace detail

/// Per-row divergence between pi = softmax(z / tau) and ref = softmax(z_ref / tau) for every
/// valid row of the batch (see `divergence`). Writes value (N entries, any contiguous shape
/// such as N or B x T): the unscaled divergence, 0 for masked rows. Returns the loss
/// beta * sum a_{b,t} value_{b,t} and counts. One streaming pass per row (two for JSD).
template <class S, class M, class V>
logits_summary logits_divergence(divergence d, const logit_batch<S, M>& batch,
                                 const Eigen::DenseBase<V>& value,
                                 const logits_options& opt = {}) {
  // 16-bit z: computed, and written, in float
  return detail::divergence_rows(d, batch, detail::value_output(batch, value),
                                 detail::values_only{}, opt);
}

/// The same, and the exact gradient of the batch loss with respect to z:
/// grad (N x V, z's shape) = beta * a_{b,t} * d value_{b,t} / d z_{b,t}, zero for masked
/// rows, with
///   RKL: pi (log pi - log ref - RKL) / tau,   FKL: (pi - ref) / tau,
///   JSD: (1 - lambda) pi (log pi - log M - KL(pi || M)) / tau.
/// This is the per-state ("part 1") gradient of docs/theory.md: each state's distribution
/// is differentiated with the states held fixed. A second pass per row writes the gradient.
///
/// grad may be z itself (the same memory, row stride and type; float or double z): the
/// gradient is then written over the logits, each entry after the kernel has read it for
/// the last time, and no N x V buffer exists (docs/logits.md, "Gradient over the logits").
/// It is the gradient a separate grad gets, bit for bit where the rows are under 64 KiB or
/// both start every row at a packet-aligned address. Any other overlap of grad with z or
/// z_ref is an input_error, as is grad over 16-bit z (its entries cannot hold a float
/// gradient). A call that raises for a bad row may have written the gradients of other rows
/// over their logits.
template <class S, class M, class V, class G>
logits_summary logits_divergence(divergence d, const logit_batch<S, M>& batch,
                                 const Eigen::DenseBase<V>& value, const Eigen::DenseBase<G>& grad,
                                 const logits_options& opt = {}) {
  const auto go = detail::grad_output(batch, grad);
  return detail::divergence_rows(d, batch, detail::value_output(batch, value), go, opt);
}

}  // namespace klgrad
