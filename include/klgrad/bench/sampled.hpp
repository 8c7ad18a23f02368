// The sampled-token measurement: a synthetic batch (padded with a mask, or packed), split by
// whole sequences between threads, and its floor, McCalpin's triad a = b + 3 c over arrays
// that hold as many bytes as the kernel reads and writes per call.
#pragma once

#include "fill.hpp"
#include "paired.hpp"
#include "settings.hpp"
#include "workers.hpp"
#include "../evaluate.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <vector>

namespace klgrad::bench::detail {

/// A batch of log-probabilities in [-3, -1] (behaviour log-probs too when the spec weights
/// tokens), padded with 90% valid tokens or packed, and its value and coef outputs.
template <class T>
struct sampled_data {
  using column = Eigen::Array<T, Eigen::Dynamic, 1>;
  batch_shape shape;
  bool weighted = false;
  column logp, ref, behavior, value, coef;
  Eigen::Array<unsigned char, Eigen::Dynamic, 1> mask;  ///< padded only
  std::vector<std::int64_t> starts;  ///< packed: sequence b is [starts[b], starts[b + 1])
  batch_counts counts;               ///< the whole batch's, for slices run by threads

  sampled_data(const batch_shape& b, bool weights) : shape(b), weighted(weights) {
    const Index n = b.size();
    uniform u;
    logp.resize(n);
    ref.resize(n);
    fill_uniform(logp.data(), n, -3, -1, u);
    fill_uniform(ref.data(), n, -3, -1, u);
    if (weighted) {
      behavior.resize(n);
      fill_uniform(behavior.data(), n, -3, -1, u);
    }
    value.setZero(n);
    coef.setZero(n);
    b.packed() ? lay_out_packed() : lay_out_padded(u);
  }

  Index sequences() const { return Index(starts.size()) - 1; }

  /// Bytes a call reads and writes per token: logp, ref (and behaviour), the mask byte of a
  /// padded batch, value and coef.
  double bytes_per_token() const {
    return double((weighted ? 5 : 4) * sizeof(T)) + (shape.packed() ? 0.0 : 1.0);
  }

 private:
  void lay_out_padded(uniform& u) {
    mask.resize(shape.size());
    for (Index i = 0; i < mask.size(); ++i) mask[i] = u() < 0.9 ? 1 : 0;
    for (Index b = 0; b <= shape.sequences; ++b) starts.push_back(b * shape.positions);
    counts.tokens = Index((mask != 0).count());
    counts.sequences = 0;
    for (Index b = 0; b < shape.sequences; ++b)
      counts.sequences += mask.segment(b * shape.positions, shape.positions).any() ? 1 : 0;
  }
  void lay_out_packed() {
    starts.push_back(0);
    std::size_t k = 0;
    while (starts.back() < shape.tokens) {
      const Index length = shape.lengths.empty() ? shape.tokens : shape.lengths[k++ % shape.lengths.size()];
      starts.push_back(std::min<std::int64_t>(starts.back() + length, shape.tokens));
    }
    counts.tokens = shape.tokens;
    counts.sequences = sequences();
  }
};

/// One call over sequences [first, last) of d: call(batch, value, coef, options), with the
/// batch's global counts when it is a slice.
template <class T, class Call>
void evaluate_slice(sampled_data<T>& d, const spec& s, Index first, Index last,
                    std::vector<std::int64_t>& offsets, bool slice, Call& call) {
  using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using mask_rows = Eigen::Array<unsigned char, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using column = Eigen::Array<T, Eigen::Dynamic, 1>;
  options opt;
  if (slice) opt.counts = d.counts;
  const Index begin = Index(d.starts[std::size_t(first)]);
  const Index n = Index(d.starts[std::size_t(last)]) - begin;
  auto with_behavior = [&](const auto& batch, auto&& lb, auto&& value, auto&& coef) {
    if (d.weighted) call(s, batch.with_behavior(lb), value, coef, opt);
    else call(s, batch, value, coef, opt);
  };
  if (d.shape.packed()) {
    using map = Eigen::Map<const column>;
    using out = Eigen::Map<column>;
    const Eigen::Map<const Eigen::Array<std::int64_t, Eigen::Dynamic, 1>> o(offsets.data(),
                                                                            Index(offsets.size()));
    with_behavior(klgrad::packed(map(d.logp.data() + begin, n), map(d.ref.data() + begin, n), o),
                  map(d.behavior.data() + (d.weighted ? begin : 0), d.weighted ? n : 0),
                  out(d.value.data() + begin, n), out(d.coef.data() + begin, n));
  } else {
    using map = Eigen::Map<const rows>;
    using out = Eigen::Map<rows>;
    const Index b = last - first, t = d.shape.positions;
    with_behavior(klgrad::padded(map(d.logp.data() + begin, b, t), map(d.ref.data() + begin, b, t),
                                 Eigen::Map<const mask_rows>(d.mask.data() + begin, b, t)),
                  map(d.behavior.data() + (d.weighted ? begin : 0), d.weighted ? b : 0, t),
                  out(d.value.data() + begin, b, t), out(d.coef.data() + begin, b, t));
  }
}

/// McCalpin's triad a = b + 3 c over three arrays of T that hold `bytes` bytes together,
/// split into `slices` contiguous ranges.
template <class T>
struct triad {
  Eigen::Array<T, Eigen::Dynamic, 1> a, b, c;
  explicit triad(double bytes) {
    const Index n = std::max<Index>(1, Index(bytes / (3.0 * sizeof(T))));
    a.setZero(n);
    b.setConstant(n, T(1));
    c.setConstant(n, T(2));
  }
  void run(int slice, int slices) {
    const Index first = a.size() * slice / slices, n = a.size() * (slice + 1) / slices - first;
    a.segment(first, n) = b.segment(first, n) + T(3) * c.segment(first, n);
  }
};

/// The measurement of call(spec, batch, value, coef, options) on a synthetic batch of
/// `shape` beside the triad over the same bytes, interleaved (paired.hpp).
template <class T, class Call>
result measure_sampled(const spec& s, const batch_shape& shape, const settings& how, Call call) {
  check_settings(how);
  check_shape(shape, false);
  sampled_data<T> d(shape, s.importance.active());
  const int slices = int(std::min<Index>(how.threads, std::max<Index>(1, d.sequences())));
  // Each slice's offsets, rebased to its first token, made before any timing.
  std::vector<std::vector<std::int64_t>> offsets(static_cast<std::size_t>(slices));
  for (int i = 0; i < slices; ++i) {
    const auto [first, last] = slice_of(d.sequences(), i, slices);
    for (Index b = first; b <= last; ++b)
      offsets[std::size_t(i)].push_back(d.starts[std::size_t(b)] - d.starts[std::size_t(first)]);
  }
  triad<T> floor(double(d.shape.size()) * d.bytes_per_token());
  workers team(slices);
  auto kernel_slice = [&](int i) {
    const auto [first, last] = slice_of(d.sequences(), i, slices);
    evaluate_slice(d, s, first, last, offsets[std::size_t(i)], slices > 1, call);
  };
  auto floor_slice = [&](int i) { floor.run(i, slices); };
  const paired_times t =
      interleave([&] { team.run(kernel_slice); }, [&] { team.run(floor_slice); }, how);
  result r = summarise(t, shape.size());
  r.name = to_string(s);
  r.format = sizeof(T) == sizeof(float) ? number_format::float32 : number_format::float64;
  r.floor = "triad";
  r.bytes_per_item = d.bytes_per_token();
  r.floor_bytes_per_item = double(3 * floor.a.size()) * sizeof(T) / double(shape.size());
  r.threads = slices;
  return r;
}

}  // namespace klgrad::bench::detail
