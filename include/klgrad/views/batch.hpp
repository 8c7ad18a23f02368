// Zero-copy views of a trainer's batch, the one layer every entry point reads through:
// token layouts, padded (B x T row-major with an optional 0/1 mask) or packed (one token
// array with sequence offsets); the log-prob batches of evaluate() built on them; the rows
// of logits of the full-vocabulary and the sampled-token calls; and the counts of valid
// tokens the aggregations need. Over Eigen objects or raw buffers, never a copy.
#pragma once

#include "../support/errors.hpp"
#include "../support/scalars.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace klgrad {

namespace detail {

/// Rows of a 2-D buffer: row r starts at data + r * stride and holds cols elements.
template <class T>
struct strided_rows {
  T* data = nullptr;
  Index rows = 0, cols = 0, stride = 0;
  T* row(Index r) const { return data + r * stride; }
  bool present() const { return data != nullptr; }
};

inline std::string shape_text(Index rows, Index cols) { return cat(rows, "x", cols); }

/// A view of any Eigen object with direct access whose rows are contiguous (row-major, or a
/// single row / column). Raises shape_error otherwise: no copy is ever made.
template <class D>
auto rows_of(const Eigen::DenseBase<D>& x, const char* name) {
  static_assert(bool(D::Flags & Eigen::DirectAccessBit),
                "klgrad: batch arrays need direct memory access (an Array, Matrix, Map or "
                "Ref), not an unevaluated expression");
  using S = std::remove_reference_t<decltype(*x.derived().data())>;
  strided_rows<S> v;
  v.data = x.derived().data();
  v.rows = x.rows();
  v.cols = x.cols();
  const bool row_major = bool(D::IsRowMajor);
  if (row_major && x.innerStride() == 1) {
    v.stride = x.outerStride();
  } else if (!row_major && (x.rows() == 1 || x.cols() == 1)) {
    // A vector: elements are innerStride() apart, so contiguous only with stride 1.
    if (x.innerStride() != 1 && x.size() > 1)
      raise<shape_error>(cat(name, " must be contiguous (inner stride 1), got inner stride ",
                             x.innerStride()));
    v.stride = x.rows() == 1 ? x.cols() : 1;
  } else {
    raise<shape_error>(cat(name, " is ", shape_text(x.rows(), x.cols()),
                           " column-major; klgrad reads a trainer's B x T buffer row-major "
                           "(use Eigen::RowMajor or a row-major Map)"));
  }
  return v;
}

/// A 1-D view (packed batches): any vector, row or column, contiguous.
template <class D>
auto vector_of(const Eigen::DenseBase<D>& x, const char* name) {
  if (x.rows() != 1 && x.cols() != 1 && x.size() != 0)
    raise<shape_error>(cat(name, " is ", shape_text(x.rows(), x.cols()),
                           " but a packed batch takes 1-D arrays"));
  if (x.innerStride() != 1 && x.size() > 1)
    raise<shape_error>(cat(name, " must be contiguous (inner stride 1), got inner stride ",
                           x.innerStride()));
  using S = std::remove_reference_t<decltype(*x.derived().data())>;
  strided_rows<S> v;
  v.data = x.derived().data();
  v.rows = 1;
  v.cols = x.size();
  v.stride = x.size();
  return v;
}

template <class A, class B>
void require_same_shape(const strided_rows<A>& a, const char* a_name, const strided_rows<B>& b,
                        const char* b_name) {
  if (a.rows != b.rows || a.cols != b.cols)
    raise<shape_error>(cat("shape mismatch: ", a_name, " is ", shape_text(a.rows, a.cols),
                           " but ", b_name, " is ", shape_text(b.rows, b.cols)));
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

/// A mask's entries as the loops over them read them: a bool mask as its bytes (0 or 1, as
/// bool is stored), since GCC 12 vectorised neither the kernel's mask loop nor the count
/// over bool (scalar, branching code: a bool-masked k3-as-loss ran 2.1x, k1-in-reward 3x
/// the time of a byte-masked one, docs/performance.md); a mask of any other type as it is.
template <class M>
const auto* mask_entries(const M* mask) {
  if constexpr (std::is_same_v<M, bool>)
    return reinterpret_cast<const unsigned char*>(mask);
  else
    return mask;
}

/// The valid entries of a mask of `size` entries (nullptr: every entry valid). Counts
/// blocks into a 32-bit total, which compilers vectorise over a byte mask four times wider
/// than a 64-bit one.
template <class M>
Index count_valid(const M* mask, Index size) {
  if (!mask) return size;
  constexpr Index block = Index(1) << 20;
  Index n = 0;
  for (Index i0 = 0; i0 < size; i0 += block) {
    const auto* m = mask_entries(mask) + i0;
    const Index in_size = std::min(block, size - i0);
    std::uint32_t in_block = 0;
    for (Index i = 0; i < in_size; ++i) in_block += m[i] != 0;
    n += in_block;
  }
  return n;
}

/// Whether a mask of `size` entries has a valid one (nullptr: when size > 0).
template <class M>
bool any_valid(const M* mask, Index size) {
  if (!mask) return size > 0;
  for (Index i = 0; i < size; ++i)
    if (mask[i] != M(0)) return true;
  return false;
}

/// What the aggregations count: N_tokens (valid tokens) and B_nonempty (sequences with one).
struct token_count {
  Index tokens = 0, sequences = 0;
};

/// The counts of a batch of `sequences` sequences, sequence b holding valid_in(b) valid
/// tokens: the one count behind evaluate() and the full-vocabulary calls.
template <class F>
token_count count_tokens(Index sequences, F&& valid_in) {
  token_count n;
  for (Index b = 0; b < sequences; ++b) {
    const Index k = valid_in(b);
    n.tokens += k;
    n.sequences += k > 0;
  }
  return n;
}

/// x clamped to [-max, max]; NaN stays NaN. Keeps sums and products finite.
template <class T>
T saturated(T x) {
  const T top = std::numeric_limits<T>::max();
  return x > top ? top : (x < -top ? -top : x);
}

/// Whether token t of a mask (nullptr: every token valid) is valid.
template <class M>
bool valid_at(const M* mask, Index t) {
  return !mask || mask[t] != M(0);
}

/// A writable view of a per-token array of a layout (Eigen's idiom for writing through a
/// const reference to a Map).
template <class Layout, class D>
auto output_of(const Layout& layout, const Eigen::DenseBase<D>& x, const char* name) {
  const auto v = layout.view(x, name);
  using S = std::remove_const_t<std::remove_reference_t<decltype(*v.data)>>;
  return strided_rows<S>{const_cast<S*>(v.data), v.rows, v.cols, v.stride};
}

template <class O>
void check_offsets(const O* offsets, Index count, Index tokens) {
  if (count < 0) raise<shape_error>("offsets must have at least one entry (B + 1 entries)");
  if (Index(offsets[0]) != 0)
    raise<input_error>(cat("offsets[0] must be 0, got ", Index(offsets[0])));
  for (Index b = 0; b < count; ++b)
    if (offsets[b + 1] < offsets[b])
      raise<input_error>(cat("offsets must be non-decreasing: offsets[", b + 1, "] = ",
                             Index(offsets[b + 1]), " < offsets[", b, "] = ",
                             Index(offsets[b])));
  if (Index(offsets[count]) != tokens)
    raise<shape_error>(cat("shape mismatch: offsets end at ", Index(offsets[count]),
                           " but logp has ", tokens, " tokens"));
}

/// The tokens of one sequence, as the kernels see them.
template <class T, class M>
struct sequence_view {
  const T* logp;
  const T* ref;
  const T* behavior;  ///< nullptr when the batch has no behaviour log-probs
  const M* mask;      ///< nullptr when every token is valid
  Index size;         ///< positions, valid or not
  Index first;        ///< flat index of the first position (for error messages)
  Index row;          ///< sequence index
};

}  // namespace detail

/// The tokens of a padded batch: B sequences of T positions, row-major; token (b, t) is
/// valid where mask(b, t) != 0 (every token when there is no mask). Per-token arrays given
/// with this layout are B x T, row-major (or a row-major Map over a trainer's buffer).
template <class M = unsigned char>
struct padded_tokens {
  using mask_scalar = M;
  Index count = 0, length = 0;      ///< B and T
  detail::strided_rows<const M> mask;  ///< absent: every token valid

  Index sequences() const { return count; }
  const M* mask_of(Index b) const { return mask.present() ? mask.row(b) : nullptr; }
  Index size_of(Index) const { return length; }
  std::string shape() const { return detail::shape_text(count, length); }

  /// A view of a per-token array of this layout; raises shape_error naming both shapes.
  template <class D>
  auto view(const Eigen::DenseBase<D>& x, const char* name) const {
    auto v = detail::rows_of(x, name);
    if (v.rows != count || v.cols != length)
      detail::raise<shape_error>(detail::cat("shape mismatch: ", name, " is ",
                                             detail::shape_text(v.rows, v.cols),
                                             " but the padded batch is ", shape(),
                                             " (B x T)"));
    return v;
  }
  template <class S>
  S* row(const detail::strided_rows<S>& v, Index b) const {
    return v.row(b);
  }
};

/// The tokens of a packed batch: sequence b holds tokens offsets[b] .. offsets[b+1]-1 of
/// one array of N tokens; token i is valid where mask(i) != 0 (every token without a mask).
/// Per-token arrays given with this layout are 1-D of length N.
template <class M = unsigned char, class O = Index>
struct packed_tokens {
  using mask_scalar = M;
  const O* offsets = nullptr;
  const M* mask = nullptr;  ///< nullptr: every token valid
  Index count = 0, tokens = 0;  ///< B and N

  Index sequences() const { return count; }
  const M* mask_of(Index b) const { return mask ? mask + Index(offsets[b]) : nullptr; }
  Index size_of(Index b) const { return Index(offsets[b + 1]) - Index(offsets[b]); }
  std::string shape() const { return detail::cat(tokens, " tokens"); }

  template <class D>
  auto view(const Eigen::DenseBase<D>& x, const char* name) const {
    auto v = detail::vector_of(x, name);
    if (v.cols != tokens)
      detail::raise<shape_error>(detail::cat("shape mismatch: ", name, " has ", v.cols,
                                             " tokens but the packed batch has ", tokens,
                                             " (offsets end at ", tokens, ")"));
    return v;
  }
  template <class S>
  S* row(const detail::strided_rows<S>& v, Index b) const {
    return v.data + Index(offsets[b]);
  }
};

/// A padded layout of B x T tokens, all valid.
inline padded_tokens<unsigned char> padded_layout(Index sequences, Index length) {
  if (sequences < 0 || length < 0)
    detail::raise<shape_error>(detail::cat("padded layout needs B >= 0 and T >= 0, got ",
                                           detail::shape_text(sequences, length)));
  padded_tokens<unsigned char> out;
  out.count = sequences;
  out.length = length;
  return out;
}

/// A padded layout whose B x T shape and valid tokens are given by a 0/1 mask (any
/// arithmetic type, row-major). padded(logp, ref, mask) takes its mask from here.
template <class K>
auto padded_layout(const Eigen::DenseBase<K>& mask) {
  using M = std::remove_const_t<typename K::Scalar>;
  static_assert(std::is_arithmetic_v<M>, "klgrad: the mask must be of arithmetic type");
  padded_tokens<M> out;
  out.mask = detail::rows_of(mask, "mask");
  out.count = out.mask.rows;
  out.length = out.mask.cols;
  return out;
}

namespace detail {

/// The packed layout of B+1 offsets (any integer type), checked: at least one entry, from 0,
/// non-decreasing, ending at `tokens`, the length of the arrays the offsets cut (a layout
/// without arrays passes no_length: the offsets' own end). Every packed layout and packed
/// batch is built on it.
inline constexpr Index no_length = -1;
template <class F>
auto offsets_layout(const Eigen::DenseBase<F>& offsets, Index tokens) {
  using O = std::remove_const_t<typename F::Scalar>;
  static_assert(std::is_integral_v<O>, "klgrad: offsets must be integers");
  const auto off = vector_of(offsets, "offsets");
  if (off.cols < 1) raise<shape_error>("offsets must have at least one entry (B + 1 entries)");
  packed_tokens<unsigned char, O> out;
  out.offsets = off.data;
  out.count = off.cols - 1;
  out.tokens = tokens == no_length ? Index(off.data[out.count]) : tokens;
  check_offsets(out.offsets, out.count, out.tokens);
  return out;
}

/// The layout with a per-token mask of its N tokens (any arithmetic type; nonzero = valid).
/// `data` names the arrays the layout cuts, for the message (nullptr: a layout alone).
template <class M0, class O, class K>
auto with_token_mask(const packed_tokens<M0, O>& base, const Eigen::DenseBase<K>& mask,
                     const char* data) {
  using M = std::remove_const_t<typename K::Scalar>;
  static_assert(std::is_arithmetic_v<M>, "klgrad: the mask must be of arithmetic type");
  const auto m = vector_of(mask, "mask");
  if (m.cols != base.tokens)
    raise<shape_error>(data ? cat("shape mismatch: ", data, " has ", base.tokens,
                                  " tokens but mask has ", m.cols)
                            : cat("shape mismatch: mask has ", m.cols,
                                  " tokens but the offsets end at ", base.tokens));
  packed_tokens<M, O> out;
  out.offsets = base.offsets;
  out.count = base.count;
  out.tokens = base.tokens;
  out.mask = m.data;
  return out;
}

}  // namespace detail

/// A packed layout from B+1 offsets (any integer type), every token valid.
template <class F>
auto packed_layout(const Eigen::DenseBase<F>& offsets) {
  return detail::offsets_layout(offsets, detail::no_length);
}

/// A packed layout from B+1 offsets and a per-token mask of length N = offsets[B].
template <class F, class K>
auto packed_layout(const Eigen::DenseBase<F>& offsets, const Eigen::DenseBase<K>& mask) {
  return detail::with_token_mask(packed_layout(offsets), mask, nullptr);
}

/// Padded batch: B sequences of T positions, row-major; token (b, t) is valid where
/// mask(b, t) != 0 (every token when there is no mask). Masked positions are never read
/// into a result, whatever they hold.
template <class T, class M = T>
struct padded_batch {
  using scalar = T;
  using mask_scalar = M;
  detail::strided_rows<const T> logp, ref, behavior;
  detail::strided_rows<const M> mask;

  Index sequences() const { return logp.rows; }
  Index positions() const { return logp.cols; }
  bool has_behavior() const { return behavior.present(); }
  /// The batch's tokens as a layout (shape and mask), for per-token arrays of its shape:
  /// evaluate()'s outputs, and shape_rewards, discounted_returns and gae (returns.hpp).
  padded_tokens<M> layout() const {
    padded_tokens<M> out;
    out.count = logp.rows;
    out.length = logp.cols;
    out.mask = mask;
    return out;
  }

  detail::sequence_view<T, M> sequence(Index b) const {
    return {logp.row(b), ref.row(b), behavior.present() ? behavior.row(b) : nullptr,
            mask.present() ? mask.row(b) : nullptr, logp.cols, b * logp.cols, b};
  }

  /// The same batch with behaviour log-probs lb (same shape), for importance weights.
  template <class D>
  padded_batch with_behavior(const Eigen::DenseBase<D>& lb) const {
    padded_batch out = *this;
    out.behavior = detail::rows_of(lb, "behavior");
    detail::require_same_shape(logp, "logp", out.behavior, "behavior");
    return out;
  }
};

/// Packed batch ("remove padding"): all tokens in one array; sequence b holds the tokens
/// offsets[b] .. offsets[b+1]-1; offsets has B+1 non-decreasing entries from 0 to N.
template <class T, class M = T, class O = Index>
struct packed_batch {
  using scalar = T;
  using mask_scalar = M;
  const T* logp = nullptr;
  const T* ref = nullptr;
  const T* behavior = nullptr;
  const M* mask = nullptr;
  const O* offsets = nullptr;
  Index tokens = 0;      ///< N
  Index count = 0;       ///< B

  Index sequences() const { return count; }
  Index positions() const { return tokens; }
  bool has_behavior() const { return behavior != nullptr; }
  /// The batch's tokens as a layout (padded_batch::layout).
  packed_tokens<M, O> layout() const {
    packed_tokens<M, O> out;
    out.offsets = offsets;
    out.mask = mask;
    out.count = count;
    out.tokens = tokens;
    return out;
  }

  detail::sequence_view<T, M> sequence(Index b) const {
    const Index start = Index(offsets[b]), size = Index(offsets[b + 1]) - start;
    return {logp + start, ref + start, behavior ? behavior + start : nullptr,
            mask ? mask + start : nullptr, size, start, b};
  }

  template <class D>
  packed_batch with_behavior(const Eigen::DenseBase<D>& lb) const {
    auto v = detail::vector_of(lb, "behavior");
    if (v.cols != tokens)
      detail::raise<shape_error>(detail::cat("shape mismatch: logp has ", tokens,
                                             " tokens but behavior has ", v.cols));
    packed_batch out = *this;
    out.behavior = v.data;
    return out;
  }
};

namespace detail {
/// The scalar of a batch over logp (L) and ref (R), checked: float or double, one for both.
template <class L, class R>
struct batch_scalar {
  using type = std::remove_const_t<typename L::Scalar>;
  static_assert(std::is_same_v<type, std::remove_const_t<typename R::Scalar>>,
                "klgrad: logp and ref differ in type");
  static_assert(std::is_floating_point_v<type>,
                "klgrad: log-probabilities must be float or double");
};
template <class L, class R>
using batch_scalar_t = typename batch_scalar<L, R>::type;
}  // namespace detail

/// A padded batch over logp and ref (B x T, row-major), every token valid.
template <class L, class R>
auto padded(const Eigen::DenseBase<L>& logp, const Eigen::DenseBase<R>& ref) {
  using T = detail::batch_scalar_t<L, R>;
  padded_batch<T, T> b;
  b.logp = detail::rows_of(logp, "logp");
  b.ref = detail::rows_of(ref, "ref");
  detail::require_same_shape(b.logp, "logp", b.ref, "ref");
  return b;
}

/// A padded batch with a mask (any arithmetic type; nonzero = valid).
template <class L, class R, class K>
auto padded(const Eigen::DenseBase<L>& logp, const Eigen::DenseBase<R>& ref,
            const Eigen::DenseBase<K>& mask) {
  using T = std::remove_const_t<typename L::Scalar>;
  auto unmasked = padded(logp, ref);
  const auto tokens = padded_layout(mask);
  padded_batch<T, typename decltype(tokens)::mask_scalar> b;
  b.logp = unmasked.logp;
  b.ref = unmasked.ref;
  b.mask = tokens.mask;
  detail::require_same_shape(b.logp, "logp", b.mask, "mask");
  return b;
}

/// A packed batch over 1-D logp and ref with B+1 sequence offsets (any integer type).
template <class L, class R, class F>
auto packed(const Eigen::DenseBase<L>& logp, const Eigen::DenseBase<R>& ref,
            const Eigen::DenseBase<F>& offsets) {
  using T = detail::batch_scalar_t<L, R>;
  auto lp = detail::vector_of(logp, "logp"), lr = detail::vector_of(ref, "ref");
  detail::require_same_shape(lp, "logp", lr, "ref");
  const auto tokens = detail::offsets_layout(offsets, lp.cols);
  packed_batch<T, T, std::remove_const_t<typename F::Scalar>> b;
  b.logp = lp.data;
  b.ref = lr.data;
  b.offsets = tokens.offsets;
  b.tokens = tokens.tokens;
  b.count = tokens.count;
  return b;
}

/// A packed batch with a per-token mask (nonzero = valid).
template <class L, class R, class F, class K>
auto packed(const Eigen::DenseBase<L>& logp, const Eigen::DenseBase<R>& ref,
            const Eigen::DenseBase<F>& offsets, const Eigen::DenseBase<K>& mask) {
  auto base = packed(logp, ref, offsets);
  using T = typename decltype(base)::scalar;
  const auto tokens = detail::with_token_mask(base.layout(), mask, "logp");
  using M = typename decltype(tokens)::mask_scalar;
  return packed_batch<T, M, std::remove_const_t<typename F::Scalar>>{
      base.logp, base.ref, nullptr, tokens.mask, base.offsets, base.tokens, base.count};
}

/// N rows of policy and reference logits (N x V, row-major; float, double, or 16-bit:
/// Eigen::bfloat16 / Eigen::half), seen as a padded batch of
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
  /// The valid rows of sequence s.
  Index valid_in(Index s) const {
    return detail::count_valid(mask.present() ? mask.row(s) : nullptr, positions);
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
  static_assert(std::is_floating_point_v<T> || detail::is_16bit_v<T>,
                "klgrad: logits must be float, double, Eigen::bfloat16 or Eigen::half");
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
  if (b.positions == 0) {  // B sequences of no position: no row to visit (not B rows of 1)
    b.positions = 1;
    b.sequences = 0;
  }
  return b;
}

namespace detail {

/// Rows of logits with per-row ids and an optional mask, checked.
template <class T, class Y, class K>
struct sampled_rows {
  strided_rows<const T> z;
  const Y* ids;
  const K* mask;  ///< N entries, or nullptr
  Index positions;  ///< T of a B x T mask (0 without one), for messages
  bool valid(Index r) const { return valid_at(mask, r); }
};

/// The mask argument of a call without one: every row is valid.
struct no_mask {};

/// The scalar a mask is read as: the mask's own, or T (with a null pointer) for no_mask.
template <class Mask, class T>
struct mask_scalar {
  using type = std::remove_const_t<typename Mask::Scalar>;
};
template <class T>
struct mask_scalar<no_mask, T> {
  using type = T;
};

/// The sampled-token view of logits z (N x V), ids (N entries) and a mask (N entries, any
/// shape; nonzero = valid) or no_mask, with the temperature checked. Without a mask the
/// view's mask pointer is a null pointer to the compute type.
template <class Z, class D, class Mask>
auto sampled_view(const Eigen::DenseBase<Z>& z, const Eigen::DenseBase<D>& ids,
                  const Mask& mask, double temperature) {
  using T = std::remove_const_t<typename Z::Scalar>;
  using Y = std::remove_const_t<typename D::Scalar>;
  constexpr bool masked = !std::is_same_v<Mask, no_mask>;
  using K = typename mask_scalar<Mask, compute_t<T>>::type;
  static_assert(std::is_floating_point_v<T> || is_16bit_v<T>,
                "klgrad: logits must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(std::is_integral_v<Y>, "klgrad: token ids must be integers");
  static_assert(std::is_arithmetic_v<K>, "klgrad: the mask must be of arithmetic type");
  check_temperature(temperature);
  sampled_rows<T, Y, K> v;
  v.z = rows_of(z, "z");
  v.ids = flat_of(ids, "ids", v.z.rows, v.z.rows, v.z.cols);
  if constexpr (masked) {
    v.mask = flat_of(mask, "mask", v.z.rows, v.z.rows, v.z.cols);
    v.positions = mask.rows() > 1 ? mask.cols() : 0;
  } else {
    v.mask = nullptr;
    v.positions = 0;
  }
  return v;
}

}  // namespace detail

}  // namespace klgrad
