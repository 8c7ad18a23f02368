// Top-k forms of the full-vocabulary divergences, as distillation trainers compute them:
// forward KL over the reference's top k, reverse KL over the policy's top k, and both with
// a tail bin (k + 1 bins), each with its exact gradient with respect to the policy logits.
#pragma once

#include "../support/names.hpp"
#include "driver.hpp"
#include "streaming.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <string_view>
#include <type_traits>

namespace klgrad {

/// Which top-k divergence a row gets. K is the set of the k largest logits of one row (the
/// "chooser"): the reference's for the forward forms, the policy's for the reverse ones.
/// Every form is a KL divergence from the chooser's side to the other side between two
/// distributions on bins (docs/logits.md, "Top-k forms"):
enum class top_k_form {
  /// K = ref's top k; sum_K rt (log rt - log pi), rt = ref renormalised over K, pi full.
  forward_kl,
  /// K = pi's top k; sum_K pt (log pt - log ref), pt = pi renormalised over K, ref full:
  /// the RKL of the top-k-truncated policy.
  reverse_kl,
  /// K = ref's top k; FKL between the k + 1 bins (each i in K, and the rest) of ref and pi:
  /// sum_K ref (log ref - log pi) + R (log R - log P), R = 1 - ref(K), P = 1 - pi(K).
  forward_kl_tail,
  /// K = pi's top k; RKL between the k + 1 bins of pi and ref:
  /// sum_K pi (log pi - log ref) + P (log P - log R).
  reverse_kl_tail,
};

/// Each top k form's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<top_k_form> top_k_form_names[] = {
    {top_k_form::forward_kl, "forward-kl-top-k"},
    {top_k_form::reverse_kl, "reverse-kl-top-k"},
    {top_k_form::forward_kl_tail, "forward-kl-top-k-tail"},
    {top_k_form::reverse_kl_tail, "reverse-kl-top-k-tail"}};

inline constexpr auto top_k_forms = detail::values_in(top_k_form_names);

inline constexpr std::string_view to_string(top_k_form x) {
  return detail::name_in(top_k_form_names, x);
}

/// The form named by to_string, or nothing.
inline std::optional<top_k_form> top_k_form_named(std::string_view name) {
  return detail::value_in(top_k_form_names, name);
}

/// True where K is the policy's top k (the reverse forms), false where it is the reference's.
inline constexpr bool policy_chooses(top_k_form f) {
  return f == top_k_form::reverse_kl || f == top_k_form::reverse_kl_tail;
}

namespace detail {

/// Descending value, ties to the smaller index: a deterministic torch.topk order. Rows
/// stored as S (16-bit too) are compared as their widened values (the same order).
template <class S, class I>
struct top_k_order {
  const S* x;
  bool operator()(I a, I b) const {
    const auto xa = widen(x[Index(a)]), xb = widen(x[Index(b)]);
    return xa > xb || (xa == xb && a < b);
  }
};

/// The k largest entries of a row, written to idx[0..k) in top_k_order. One scan with a
/// k-heap held in idx; blocks whose maximum does not beat the heap's worst are skipped.
template <class S, class I>
void select_top_k(const S* x, Index V, I* idx, Index k) {
  const top_k_order<S, I> better{x};
  for (Index j = 0; j < k; ++j) idx[j] = I(j);
  std::make_heap(idx, idx + k, better);  // front: the worst kept entry
  auto threshold = widen(x[Index(idx[0])]);
  constexpr Index block = 64;
  for (Index j0 = k; j0 < V; j0 += block) {
    const Index n = std::min(block, V - j0);
    if (!(max_of(x + j0, n) > threshold)) continue;
    for (Index j = j0; j < j0 + n; ++j) {
      if (!(widen(x[j]) > threshold)) continue;  // a tie loses: j is later than every kept one
      std::pop_heap(idx, idx + k, better);
      idx[k - 1] = I(j);
      std::push_heap(idx, idx + k, better);
      threshold = widen(x[Index(idx[0])]);
    }
  }
  std::sort_heap(idx, idx + k, better);
}

/// Selects K from the chooser row x; false if x holds a NaN / +inf or no finite entry (its
/// top entry is then -inf).
template <class S, class I>
bool choose_top_k(const S* x, Index V, I* idx, Index k) {
  using T = compute_t<S>;
  // A sum that is NaN or +inf sends the row to the scan for the bad entry (16-bit rows are
  // summed widened, in float).
  T total;
  if constexpr (is_16bit_v<S>)
    total = T(reduce_row<T, 1>(V, [&](auto* acc, Index i) {
              using P = std::remove_pointer_t<decltype(acc)>;
              acc[0] = ei::padd(acc[0], load<P>(x, i));
            })[0]);
  else
    total = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(x, V).sum();
  if ((std::isnan(total) || total == std::numeric_limits<T>::infinity()) &&
      first_invalid(x, V) >= 0)
    return false;
  select_top_k(x, V, idx, k);
  return widen(x[Index(idx[0])]) != -std::numeric_limits<T>::infinity();
}

inline double log_add_exp(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  return std::max(a, b) + std::log1p(std::exp(-std::abs(a - b)));
}

/// log sum exp of x = xs it over the row's K entries (any order).
template <class S, class I, class T = compute_t<S>>
double lse_over(const S* xs, T it, const I* idx, Index k) {
  double top = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < k; ++j) top = std::max(top, double(widen(xs[Index(idx[j])]) * it));
  if (top == -std::numeric_limits<double>::infinity()) return top;
  double sum = 0;
  for (Index j = 0; j < k; ++j) sum += std::exp(double(widen(xs[Index(idx[j])]) * it) - top);
  return top + std::log(sum);
}

/// log sum exp of x = xs it and of y = ys it over the entries outside K: the log-masses of
/// the tail bins, summed directly over the rest of the row (1 - mass(K) would lose every
/// digit when the top-k mass rounds to 1). The segments between K's entries are streamed
/// with the online pass; idx is sorted by index for it and put back in top_k_order of
/// `chooser` afterwards.
template <class S, class I, class T = compute_t<S>>
std::pair<double, double> lse_outside(const S* xs, const S* ys, Index V, T it, I* idx, Index k,
                                      const S* chooser) {
  std::sort(idx, idx + k);
  double lx = -std::numeric_limits<double>::infinity(), ly = lx;
  Index start = 0;
  for (Index j = 0; j <= k; ++j) {
    const Index end = j < k ? Index(idx[j]) : V;
    if (end > start) {
      const online_state<T> segment =
          online_pass<true, false>(xs + start, ys + start, end - start, it);
      lx = log_add_exp(lx, segment.lse_x());
      ly = log_add_exp(ly, segment.lse_y());
    }
    start = end + 1;
  }
  std::sort(idx, idx + k, top_k_order<S, I>{chooser});
  return {lx, ly};
}

/// binned_kl()'s la_rest for no tail bin.
inline constexpr double no_tail = -std::numeric_limits<double>::infinity();

/// KL between two distributions on the bins {i} (i in K) and, when la_rest > -inf, the rest:
///   sum_K exp(la_i) (la_i - lb_i) + exp(la_rest) (la_rest - lb_rest),
/// la_i = a_i it - lse_a, lb_i = b_i it - lse_b; empty bins of a add nothing.
template <class S, class I, class T = compute_t<S>>
double binned_kl(const S* a, const S* b, T it, const I* idx, Index k, double lse_a,
                 double lse_b, double la_rest, double lb_rest) {
  double value = 0;
  auto add = [&](double la, double lb) {
    const double p = std::exp(la);
    if (p > 0) value += p * (la - lb);
  };
  for (Index j = 0; j < k; ++j) {
    const Index i = Index(idx[j]);
    add(double(widen(a[i]) * it) - lse_a, double(widen(b[i]) * it) - lse_b);
  }
  add(la_rest, lb_rest);
  return value;
}

/// The log-sum-exp of a whole row (0 for normalised log-probabilities) with the shift and
/// log-sum the packet paths take, or not finite for a bad row.
template <class S, class T = compute_t<S>>
online_state<T> row_state(const S* x, Index V, T it, bool log_probs) {
  return first_pass<false, false>(x, x, V, it, log_probs);
}

template <class T>
bool usable(const online_state<T>& state) {
  return std::isfinite(state.lse_x()) && state.sx != 0;
}

/// What the one-sided forms share: value = binned_kl(inner renormalised over K, outer),
/// with outer's whole-row state and inner's log-sum-exp over K (lsk) for the gradient.
/// result.status is `bad` for an unusable outer row, row_nan for a NaN value, else row_ok.
template <class T>
struct one_sided_top_k {
  online_state<T> outer;
  double lsk = 0;
  row_result result;
};
template <class S, class I, class T>
one_sided_top_k<T> one_sided_top_k_value(const S* inner, const S* outer, Index V, T it,
                                         bool log_probs, const I* idx, Index k, int bad) {
  one_sided_top_k<T> out{row_state(outer, V, it, log_probs), 0.0, {0, bad}};
  if (!usable(out.outer)) return out;
  out.lsk = lse_over(inner, it, idx, k);
  const double value =
      binned_kl(inner, outer, it, idx, k, out.lsk, out.outer.lse_x(), no_tail, 0.0);
  out.result = std::isnan(value) ? row_result{0, row_nan} : row_result{value, row_ok};
  return out;
}

/// write_row(g, V, f) for a gradient written over z itself, but for K's entries, which keep
/// z's values for the loop over K that follows: a lane of f's packet at an entry of K gets
/// z's entry back. K's entries are those that top_k_order of the chooser puts no later than
/// idx[k - 1] (idx in that order): the very set select_top_k chose. f reads an entry of z
/// only to write that entry, and K's last entry, which compares, is never written.
template <class S, class I, class T, class F>
void write_around_top_k(T* g, Index V, const S* chooser, const I* idx, Index k, F&& f) {
  const top_k_order<S, I> better{chooser};
  const I last = idx[k - 1];
  const T least = widen(chooser[Index(last)]);
  auto in_k = [&](Index i) { return I(i) == last || better(I(i), last); };
  write_row(g, V, [&](auto tag, Index i) {
    using P = decltype(tag);
    const P out = f(tag, i);
    if constexpr (std::is_same_v<P, T>) {
      return in_k(i) ? g[i] : out;
    } else {
      // A packet whose entries are all below K's least holds none of K.
      if (!(horizontal_max<T>(load<P>(chooser, i)) >= least)) return out;
      constexpr Index L = ei::unpacket_traits<P>::size;
      T lanes[std::size_t(L)];
      ei::pstoreu(lanes, out);
      for (Index l = 0; l < L; ++l)
        if (in_k(i + l)) lanes[l] = g[i + l];
      return ei::ploadu<P>(lanes);
    }
  });
}

/// forward_kl: value = binned_kl(ref renormalised over K, pi), gradient
///   dFKL_k/dz_j = it (pi_j - rt_j [j in K])   (since sum_K rt = 1).
template <class S, class I, class T = compute_t<S>>
row_result forward_top_k_row(const S* z, const S* zr, Index V, T it, bool log_probs,
                             const I* idx, Index k, double scale, T* g) {
  const auto v = one_sided_top_k_value(zr, z, V, it, log_probs, idx, k, row_bad_z);
  if (v.result.status != row_ok || !g) return v.result;
  const T c = T(scale) * it, cx = v.outer.cx, lsx = T(v.outer.log_sx());
  // Over z itself as it is: the loop over K reads z_ref and g alone.
  write_row(g, V, [&](auto tag, Index i) {
    using P = decltype(tag);
    return ei::pmul(splat<P>(c), v_exp(log_softmax_at<P>(z, i, it, cx, lsx)));
  });
  for (Index j = 0; j < k; ++j) {
    const Index i = Index(idx[j]);
    g[i] -= c * T(std::exp(double(widen(zr[i]) * it) - v.lsk));
  }
  return v.result;
}

/// reverse_kl: value = binned_kl(pi renormalised over K, ref) = V_k; pt depends on z_K
/// alone, so the gradient is 0 off K and on K the RKL gradient of pt against ref:
///   dV_k/dz_j = it pt_j (log pt_j - log ref_j - V_k)   (j in K).
template <class S, class I, class T = compute_t<S>>
row_result reverse_top_k_row(const S* z, const S* zr, Index V, T it, bool log_probs,
                             const I* idx, Index k, double scale, T* g) {
  const auto v = one_sided_top_k_value(z, zr, V, it, log_probs, idx, k, row_bad_ref);
  if (v.result.status != row_ok || !g) return v.result;
  const double value = v.result.value, lsk = v.lsk, lse_r = v.outer.lse_x();
  if (!std::isfinite(value)) return {value, row_infinite_rkl};
  if (writes_over(z, g))  // zeros around K, whose logits the loop below reads
    write_around_top_k(g, V, z, idx, k, [](auto tag, Index) { return splat<decltype(tag)>(T(0)); });
  else
    std::fill(g, g + V, T(0));
  const double c = scale * double(it);
  for (Index j = 0; j < k; ++j) {
    const Index i = Index(idx[j]);
    const double lp = double(widen(z[i]) * it) - lsk, p = std::exp(lp);
    g[i] = p > 0 ? T(c * p * (lp - (double(widen(zr[i]) * it) - lse_r) - value)) : T(0);
  }
  return v.result;
}

/// The tail forms: KL from the chooser's k + 1 bins to the other side's. For any KL
/// between coarse-grained softmaxes, with u_b the bin masses of pi (u_b = pi_j for a
/// singleton bin, P for the tail) and d value / d u_b = h_b,
///   d value / dz_j = it pi_j (h_{b(j)} - sum_b u_b h_b).
/// forward (h_b = -r_b / u_b): on K it (pi_j - ref_j), off K it (pi_j - R pi_j / P);
/// reverse (h_b = log(u_b / r_b) + 1): it pi_j (log(u_b / r_b) - value), b = {j} on K and
/// the tail off K.
template <class S, class I, class T = compute_t<S>>
row_result tail_top_k_row(bool reverse, const S* z, const S* zr, Index V, T it, bool log_probs,
                          I* idx, Index k, double scale, T* g) {
  // One pass over both rows: the tails' log-sum-exps, and the whole rows' from them and K's
  // (a NaN / +inf or an all -inf row shows as a log-sum-exp that is not finite).
  const auto [oz, orr] = lse_outside(z, zr, V, it, idx, k, reverse ? z : zr);
  const double whole_z = log_add_exp(oz, lse_over(z, it, idx, k));
  const double whole_r = log_add_exp(orr, lse_over(zr, it, idx, k));
  if (!std::isfinite(whole_z)) return {0, row_bad_z};
  if (!std::isfinite(whole_r)) return {0, row_bad_ref};
  // Log-probabilities are taken as they are (log-sum-exp 0), as by the other kernels.
  const double lse_z = log_probs ? 0.0 : whole_z, lse_r = log_probs ? 0.0 : whole_r;
  const double lP = oz - lse_z, lR = orr - lse_r;  // log-masses of the tail bins
  const double value = reverse ? binned_kl(z, zr, it, idx, k, lse_z, lse_r, lP, lR)
                               : binned_kl(zr, z, it, idx, k, lse_r, lse_z, lR, lP);
  if (std::isnan(value)) return {0, row_nan};
  if (!g) return {value, row_ok};
  if (reverse && !std::isfinite(value)) return {value, row_infinite_rkl};
  const T c = T(scale) * it, cx = T(lse_z), lsx = T(lse_z - double(cx));
  constexpr double none = -std::numeric_limits<double>::infinity();
  // The entries off K; over z itself K's logits are kept for the loop over K below.
  auto write_off_k = [&](auto f) {
    if (writes_over(z, g)) write_around_top_k(g, V, reverse ? z : zr, idx, k, f);
    else write_row(g, V, f);
  };
  if (reverse) {
    // Off K: it pi_j (lP - lR - value); where P = 0 every pi_j off K is 0.
    const T h = T(lP == none ? 0.0 : lP - lR - value);
    write_off_k([&](auto tag, Index i) {
      using P = decltype(tag);
      const P p = v_exp(log_softmax_at<P>(z, i, it, cx, lsx));
      return where_positive(p, ei::pmul(splat<P>(c), ei::pmul(p, splat<P>(h))));
    });
  } else {
    // Off K: it (pi_j - exp(log pi_j + lR - lP)); pi_j / P <= 1 keeps the second term at
    // most R. Where P = 0 every pi_j off K is 0.
    const T d = T(lP == none ? none : lR - lP);
    write_off_k([&](auto tag, Index i) {
      using P = decltype(tag);
      const P lp = log_softmax_at<P>(z, i, it, cx, lsx);
      return ei::pmul(splat<P>(c), ei::psub(v_exp(lp), v_exp(ei::padd(lp, splat<P>(d)))));
    });
  }
  const double cd = scale * double(it);
  for (Index j = 0; j < k; ++j) {
    const Index i = Index(idx[j]);
    const double lp = double(widen(z[i]) * it) - lse_z, lr = double(widen(zr[i]) * it) - lse_r;
    const double p = std::exp(lp);
    g[i] = T(reverse ? (p > 0 ? cd * p * (lp - lr - value) : 0.0) : cd * (p - std::exp(lr)));
  }
  return {value, row_ok};
}

/// One row of a top-k form: K from the chooser row into idx, then the form's kernel.
template <class S, class I, class T = compute_t<S>>
row_result top_k_form_row(top_k_form f, const S* z, const S* zr, Index V, T it, bool log_probs,
                          I* idx, Index k, double scale, T* g) {
  if (!choose_top_k(policy_chooses(f) ? z : zr, V, idx, k))
    return {0, policy_chooses(f) ? row_bad_z : row_bad_ref};
  switch (f) {
    case top_k_form::forward_kl:
      return forward_top_k_row(z, zr, V, it, log_probs, idx, k, scale, g);
    case top_k_form::reverse_kl:
      return reverse_top_k_row(z, zr, V, it, log_probs, idx, k, scale, g);
    case top_k_form::forward_kl_tail:
      return tail_top_k_row(false, z, zr, V, it, log_probs, idx, k, scale, g);
    case top_k_form::reverse_kl_tail:
      return tail_top_k_row(true, z, zr, V, it, log_probs, idx, k, scale, g);
  }
  return {0, row_nan};
}

template <class T, class M, class D>
strided_rows<std::remove_const_t<typename D::Scalar>> index_output(const logit_batch<T, M>& b,
                                                                   const Eigen::DenseBase<D>& x) {
  using I = std::remove_const_t<typename D::Scalar>;
  static_assert(std::is_integral_v<I> && std::is_signed_v<I>,
                "klgrad: top-k indices must be a signed integer type");
  const auto v = rows_of(x, "indices");
  if (v.rows != b.rows() || v.cols < 1 || v.cols > b.vocabulary())
    raise<shape_error>(cat("shape mismatch: z is ", shape_text(b.z.rows, b.z.cols),
                           " but indices is ", shape_text(v.rows, v.cols),
                           "; indices must be N x k with 1 <= k <= V"));
  if (b.vocabulary() - 1 > Index(std::numeric_limits<I>::max()))
    raise<shape_error>(cat("indices' integer type cannot hold column ", b.vocabulary() - 1));
  return {const_cast<I*>(v.data), v.rows, v.cols, v.stride};
}

/// Runs a top-k form over the batch: grad is values_only or the gradient rows.
/// Logits stored as S; values and gradients in T = compute_t<S>.
template <class S, class M, class I, class G, class T = compute_t<S>>
logits_summary run_top_k(top_k_form f, const logit_batch<S, M>& b, const strided_rows<I>& idx,
                         T* out, const G& grad, const logits_options& opt) {
  const strided_rows<T>* go = gradient_rows<T>(grad);
  check_options(b, opt);
  const Index V = b.vocabulary(), k = idx.cols;
  const T it = T(1.0 / opt.temperature);
  const logits_summary sum = run_rows(b, out, go, opt, [&](Index r, double scale, T* g) {
    return top_k_form_row(f, b.z.row(r), b.ref.row(r), V, it, opt.log_probs, idx.row(r), k,
                          scale, g);
  });
  for (Index r = 0; r < b.rows(); ++r)
    if (!b.valid(r)) std::fill(idx.row(r), idx.row(r) + idx.cols, I(-1));
  return sum;
}
}  // namespace detail

/// Top-k divergence per row (see `top_k_form`), k = indices.cols(), 1 <= k <= V; ties in the
/// chooser row go to the smaller index. Writes indices (N x k, signed integers: K in
/// descending order of the chooser's logits; -1 in masked rows) and value (N entries, 0 in
/// masked rows). Every form is >= 0 and equals the full FKL / RKL when k = V; the tail forms
/// are <= the full FKL / RKL (data processing). Returns the loss beta * sum a_{b,t} value.
template <class T, class M, class I, class V>
logits_summary top_k_divergence(top_k_form f, const logit_batch<T, M>& batch,
                                const Eigen::DenseBase<I>& indices,
                                const Eigen::DenseBase<V>& value, const logits_options& opt = {}) {
  const auto idx = detail::index_output(batch, indices);
  auto* out = detail::value_output(batch, value);  // float for 16-bit z
  return detail::run_top_k(f, batch, idx, out, detail::values_only{}, opt);
}

/// The same, and grad = beta * a_{b,t} * d value / d z (N x V; zero in masked rows), with K
/// held fixed (docs/logits.md gives each form's gradient). A reverse form whose value is
/// +inf (ref = 0 on a bin where pi > 0) has no gradient: input_error naming the row. grad
/// may be z itself, as for logits_divergence (logits.hpp): the gradient over the logits.
template <class T, class M, class I, class V, class G>
logits_summary top_k_divergence(top_k_form f, const logit_batch<T, M>& batch,
                                const Eigen::DenseBase<I>& indices,
                                const Eigen::DenseBase<V>& value, const Eigen::DenseBase<G>& grad,
                                const logits_options& opt = {}) {
  const auto idx = detail::index_output(batch, indices);
  auto* out = detail::value_output(batch, value);
  const auto go = detail::grad_output(batch, grad);
  return detail::run_top_k(f, batch, idx, out, go, opt);
}

/// top_k_divergence(top_k_form::forward_kl, ...): over K, the reference's k largest logits,
/// the reference renormalised over K and the policy's full softmax (not renormalised):
///   value = sum_{i in K} rt_i (log rt_i - log pi_i),  rt = softmax of z_ref / tau over K,
/// and grad = beta * a_{b,t} * (pi - rt [K]) / tau.
template <class T, class M, class I, class V>
logits_summary forward_kl_top_k(const logit_batch<T, M>& batch, const Eigen::DenseBase<I>& indices,
                                const Eigen::DenseBase<V>& value, const logits_options& opt = {}) {
  return top_k_divergence(top_k_form::forward_kl, batch, indices, value, opt);
}

template <class T, class M, class I, class V, class G>
logits_summary forward_kl_top_k(const logit_batch<T, M>& batch, const Eigen::DenseBase<I>& indices,
                                const Eigen::DenseBase<V>& value, const Eigen::DenseBase<G>& grad,
                                const logits_options& opt = {}) {
  return top_k_divergence(top_k_form::forward_kl, batch, indices, value, grad, opt);
}

}  // namespace klgrad
