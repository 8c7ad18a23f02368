// The row driver of the full-vocabulary calls: checks the options, views the outputs, runs
// a row kernel over the valid rows of a logit_batch (in parallel with KLGRAD_OPENMP),
// aggregates their values into the loss and raises for the first bad row.
#pragma once

#include "../core/aggregation.hpp"
#include "../support/errors.hpp"
#include "../views/batch.hpp"
#include "options.hpp"
#include "streaming.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#include <omp.h>
#endif

namespace klgrad::detail {

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

/// Raises for a bad row: first_bad = row_status_count * row + status.
template <class T, class M>
[[noreturn]] void report_row(const logit_batch<T, M>& b, Index first_bad) {
  const Index V = b.vocabulary(), P = b.positions;
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

/// Runs row(r, scale, grad_row) -> row_result over the valid rows, writes values, zeroes
/// masked rows (value and gradient), applies the aggregation and raises for the first bad
/// row. scale = beta * a_{b,t}; grad_row is nullptr without a gradient.
/// Rows stored as S; values and gradients in T = compute_t<S>.
template <class S, class M, class RowFn, class T = compute_t<S>>
logits_summary run_rows(const logit_batch<S, M>& b, T* value, const strided_rows<T>* grad,
                        const logits_options& opt, RowFn&& row) {
  const Index V = b.vocabulary(), P = b.positions;
  const std::string why =
      aggregation_problem(opt.aggregation, opt.aggregation_constants,
                          {"aggregation=", "aggregation_constants.norm=",
                           "aggregation_constants.eps=", "aggregation_constants.seq_eps=",
                           "aggregation_constants.scale="});
  if (!why.empty()) raise<input_error>("logits_options: " + why);
  const token_count counted = count_tokens(b.sequences, [&](Index q) { return b.valid_in(q); });
  const Index tokens = counted.tokens, sequences = counted.sequences;
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
      if ((c0 + i) / P != seq) {
        seq = (c0 + i) / P;
        const Index n_b = b.valid_in(seq);
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
  if (first_bad != std::numeric_limits<Index>::max()) report_row(b, first_bad);
  logits_summary sum;
  sum.loss = loss;
  sum.rows = tokens;
  sum.sequences = sequences;
  sum.mean = tokens > 0 ? total / double(tokens) : 0.0;
  return sum;
}

/// The caller's workspace as T*, checked: nullptr when there is none.
template <class T>
T* logits_workspace(const logits_options& opt, Index V) {
  if (!opt.workspace) return nullptr;
  const Index need = logits_workspace_size<T>(V);
  if (opt.workspace_size < need) {
    input_error e(cat("logits_options.workspace_size = ", opt.workspace_size,
                      " elements, but rows of ", V, " entries with ", logits_threads(),
                      " thread(s) need ", need,
                      " (logits_workspace_size<T>(V)); pass a larger workspace, or "
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

/// This thread's slice of a workspace (nullptr without one).
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

/// value as T* (T = compute_t<S>: z's type, float for 16-bit z).
template <class S, class M, class D, class T = compute_t<S>>
T* value_output(const logit_batch<S, M>& b, const Eigen::DenseBase<D>& value) {
  static_assert(std::is_same_v<typename D::Scalar, T>,
                "klgrad: value must have z's type (float for 16-bit z)");
  return const_cast<T*>(flat_of(value, "value", b.rows(), b.z.rows, b.z.cols));
}

/// The gradient argument of a call that writes values alone: the kernels then get a gradient
/// row pointer that is nullptr at compile time (a value-only row function).
struct values_only {};

/// The gradient rows a kernel writes: none for values_only, else the caller's rows.
template <class T>
constexpr const strided_rows<T>* gradient_rows(values_only) {
  return nullptr;
}
template <class T>
const strided_rows<T>* gradient_rows(const strided_rows<T>& go) {
  return &go;
}

/// True where some byte of rows a lies in the memory of rows b. Each side's rows are taken
/// as disjoint and in increasing address order (stride >= cols); a side whose rows are not
/// is taken as overlapping wherever its address range meets the other's.
template <class A, class B>
bool rows_overlap(const strided_rows<A>& a, const strided_rows<B>& b) {
  if (a.rows == 0 || a.cols == 0 || b.rows == 0 || b.cols == 0) return false;
  using address = std::uintptr_t;
  const address a0 = reinterpret_cast<address>(a.data), b0 = reinterpret_cast<address>(b.data);
  const address a_len = address(a.cols) * sizeof(A), b_len = address(b.cols) * sizeof(B);
  // A single row's stride is never used: its length serves.
  const address a_step = a.rows > 1 ? address(a.stride) * sizeof(A) : a_len;
  const address b_step = b.rows > 1 ? address(b.stride) * sizeof(B) : b_len;
  const address a_end = a0 + address(a.rows - 1) * a_step + a_len;
  const address b_end = b0 + address(b.rows - 1) * b_step + b_len;
  if (a_end <= b0 || b_end <= a0) return false;
  if (a_step < a_len || b_step < b_len) return true;
  for (Index r = 0; r < a.rows; ++r) {
    const address s = a0 + address(r) * a_step, e = s + a_len;
    // b's first row that ends after s, then whether it starts before e
    const address q = s < b0 + b_len ? 0 : (s - b0 - b_len) / b_step + 1;
    if (q < address(b.rows) && b0 + q * b_step < e) return true;
  }
  return false;
}

/// True where a row kernel writes its gradient over z itself (grad_output allows no other
/// overlap, so the same first address is the same memory).
template <class S, class T>
bool writes_over(const S* z, const T* g) {
  return static_cast<const void*>(z) == static_cast<const void*>(g);
}

/// The gradient may be written over z itself: the same memory with the same row stride and
/// scalar type (every row kernel reads an entry of z for the last time before it writes that
/// entry's gradient). Any other overlap with z or z_ref is refused.
template <class S, class M, class T>
void check_gradient_memory(const logit_batch<S, M>& b, const strided_rows<T>& g) {
  const bool over_z = std::is_same_v<S, T> && writes_over(b.z.data, g.data) &&
                      (g.stride == b.z.stride || g.rows <= 1);
  if (!over_z && rows_overlap(g, b.z)) {
    if constexpr (!std::is_same_v<S, T>)
      raise<input_error>("grad overlaps z, whose 16-bit entries cannot hold the float "
                         "gradient: pass a separate float grad");
    const auto offset = reinterpret_cast<std::intptr_t>(g.data) -
                        reinterpret_cast<std::intptr_t>(b.z.data);
    raise<input_error>(cat("grad overlaps z's memory without being z itself (", offset,
                           " bytes from z's first entry, row stride ", g.stride, " against z's ",
                           b.z.stride,
                           "): the gradient can be written over z in place, the same memory "
                           "with the same layout, but not over part of it"));
  }
  if (rows_overlap(g, b.ref))
    raise<input_error>("grad overlaps z_ref's memory: the kernels read z_ref after writing "
                       "grad; pass a grad apart from z_ref");
}

/// The caller's gradient rows, checked: z's shape, and z's memory or none of z's and z_ref's.
template <class S, class M, class D, class T = compute_t<S>>
strided_rows<T> grad_output(const logit_batch<S, M>& b, const Eigen::DenseBase<D>& grad) {
  static_assert(std::is_same_v<typename D::Scalar, T>,
                "klgrad: grad must have z's type (float for 16-bit z)");
  const auto v = rows_of(grad, "grad");
  require_same_shape(b.z, "z", v, "grad");
  const strided_rows<T> g{const_cast<T*>(v.data), v.rows, v.cols, v.stride};
  check_gradient_memory(b, g);
  return g;
}

}  // namespace klgrad::detail
