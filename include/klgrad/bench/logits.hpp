// The full-vocabulary measurement: synthetic rows of policy and reference logits (N x V,
// float, double or 16-bit), split into runs of rows between threads, and their floor, the
// read-and-exp-sum: one pass that reads both rows and sums their exponentials, the least
// work any exact divergence over them must do.
#pragma once

#include "fill.hpp"
#include "paired.hpp"
#include "settings.hpp"
#include "workers.hpp"
#include "../logits.hpp"

#include <Eigen/Core>

#include <memory>
#include <type_traits>
#include <vector>

namespace klgrad::bench::detail {

/// Rows of logits in [-4, 4] (the reference's within 0.5 of the policy's), stored as S,
/// one sequence per `positions` rows, and the value and gradient outputs in compute_t<S>.
template <class S>
struct logits_data {
  using T = klgrad::detail::compute_t<S>;
  Index rows = 0, vocabulary = 0, positions = 0;
  std::unique_ptr<S[]> z, ref;
  std::unique_ptr<T[]> value, grad;

  explicit logits_data(const batch_shape& b)
      : rows(b.size()), vocabulary(b.vocabulary),
        positions(b.packed() ? b.size() : b.positions),
        z(new S[std::size_t(rows * vocabulary)]), ref(new S[std::size_t(rows * vocabulary)]),
        value(new T[std::size_t(rows)]()), grad(new T[std::size_t(rows * vocabulary)]()) {
    uniform u;
    fill_uniform(z.get(), rows * vocabulary, -4, 4, u);
    for (Index i = 0; i < rows * vocabulary; ++i)
      ref[std::size_t(i)] = S(float(z[std::size_t(i)]) + float(u() - 0.5));
  }
  Index sequences() const { return rows / positions; }
  /// Bytes a call reads and writes per row: both rows of logits, the gradient row, the value.
  double bytes_per_row() const {
    return double(2 * vocabulary) * double(sizeof(S)) + double(vocabulary + 1) * double(sizeof(T));
  }
};

/// The exponentials of rows [first, last) of z and ref summed (the floor's work), the rows
/// read with the kernels' own prefetching loads.
template <class S>
double exp_sum(const logits_data<S>& d, Index first, Index last) {
  using T = klgrad::detail::compute_t<S>;
  namespace ei = Eigen::internal;
  double total = 0;
  for (Index r = first; r < last; ++r) {
    const S* z = d.z.get() + r * d.vocabulary;
    const S* ref = d.ref.get() + r * d.vocabulary;
    const auto sums = klgrad::detail::reduce_row<T, 2>(d.vocabulary, [&](auto* acc, Index i) {
      using P = std::remove_pointer_t<decltype(acc)>;
      acc[0] = ei::padd(acc[0], klgrad::detail::pexp_or_exp(klgrad::detail::load_ahead<P>(z, i)));
      acc[1] = ei::padd(acc[1], klgrad::detail::pexp_or_exp(klgrad::detail::load_ahead<P>(ref, i)));
    });
    total += sums[0] + sums[1];
  }
  return total;
}

/// The measurement of divergence d's value and gradient on synthetic rows of `shape` beside
/// the read-and-exp-sum of the same rows, interleaved (paired.hpp).
template <class S>
result measure_logits(divergence which, const batch_shape& shape, const settings& how) {
  using T = klgrad::detail::compute_t<S>;
  using rows = Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using out_rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  check_settings(how);
  check_shape(shape, true);
  logits_data<S> d(shape);
  // Rows are independent: each thread takes a run of them, seen as one sequence, with the
  // whole batch's counts.
  const int slices = int(std::min<Index>(how.threads, d.rows));
  // Each slice's options, with its own workspace where the divergence uses one (as the
  // Python package and the CLI lend one), allocated before the timing.
  std::vector<logits_options> opts(static_cast<std::size_t>(slices));
  std::vector<std::unique_ptr<T[]>> works;
  for (logits_options& opt : opts) {
    if (slices > 1) opt.counts = {d.rows, d.sequences()};
    works.push_back(lend_workspace<T>(which, true, d.vocabulary, opt));
  }
  workers team(slices);
  std::vector<double> sums(static_cast<std::size_t>(slices));  // each slice's, stored as volatile
  auto kernel_slice = [&](int i) {
    const auto [r0, r1] = slice_of(d.rows, i, slices);
    const Index n = r1 - r0, v = d.vocabulary;
    const Eigen::Map<const rows> z(d.z.get() + r0 * v, n, v), ref(d.ref.get() + r0 * v, n, v);
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> value(d.value.get() + r0, n);
    Eigen::Map<out_rows> grad(d.grad.get() + r0 * v, n, v);
    logits_divergence(which, logit_rows(z, ref, slices > 1 ? 0 : d.positions), value, grad,
                      opts[std::size_t(i)]);
  };
  auto floor_slice = [&](int i) {
    const auto [r0, r1] = slice_of(d.rows, i, slices);
    static_cast<volatile double&>(sums[std::size_t(i)]) = exp_sum(d, r0, r1);
  };
  const paired_times t =
      interleave([&] { team.run(kernel_slice); }, [&] { team.run(floor_slice); }, how);
  result r = summarise(t, d.rows);
  r.name = std::string(to_string(which));
  r.floor = "exp-sum";
  r.bytes_per_item = d.bytes_per_row();
  r.floor_bytes_per_item = double(2 * d.vocabulary) * double(sizeof(S));
  r.threads = slices;
  return r;
}

}  // namespace klgrad::bench::detail
