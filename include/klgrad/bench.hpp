// Throughput of the kernels on this machine, beside this machine's floor measured in the same
// run: tokens (rows) per second with quartiles, heap allocations per call, and the ratio to
// the floor (the triad over the same bytes for sampled tokens, the read-and-exp-sum of the
// same rows for full logits), the two timed back to back in alternating order so that the
// machine's drift cancels. What `klgrad bench` and `klgrad.bench` report, and a user's own
// estimator type is measured the same way (bench/settings.hpp, docs/performance.md).
#pragma once

#include "bench/instruction_set.hpp"
#include "bench/logits.hpp"
#include "bench/paired.hpp"
#include "bench/sampled.hpp"
#include "bench/settings.hpp"
#include "core/estimators.hpp"
#include "evaluate.hpp"
#include "logits.hpp"
#include "spec/spec.hpp"

#include <Eigen/Core>

namespace klgrad::bench {

namespace detail {

/// Calls f(T{}) for the sampled-token format (float or double), refusing 16-bit ones.
template <class F>
result for_sampled_format(number_format format, F&& f) {
  if (format == number_format::float32) return f(float{});
  if (format == number_format::float64) return f(double{});
  klgrad::detail::raise<input_error>(klgrad::detail::cat(
      "sampled tokens are computed in float or double, not ", to_string(format),
      " (16-bit formats apply to full logits)"));
}

}  // namespace detail

/// Measures evaluate<Ev, Eg>(s, ...) on a synthetic batch of `shape` in `format` (float or
/// double) beside the triad over the same bytes: your own estimator types (the estimator
/// concept, core/estimators.hpp) with the spec's placement, weights, clamps, level and
/// aggregation, timed exactly as the shipped estimators are.
template <class Ev, class Eg = Ev>
result run(const spec& s, const batch_shape& shape, number_format format = number_format::float32,
           const settings& how = {}) {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  return detail::for_sampled_format(format, [&](auto t) {
    return detail::measure_sampled<decltype(t)>(s, shape, how, [](const auto&... args) {
      klgrad::evaluate<Ev, Eg>(args...);
    });
  });
}

/// Measures evaluate(s, ...), the spec's own estimators, the same way.
inline result run(const spec& s, const batch_shape& shape,
                  number_format format = number_format::float32, const settings& how = {}) {
  return detail::for_sampled_format(format, [&](auto t) {
    return detail::measure_sampled<decltype(t)>(s, shape, how, [](const auto&... args) {
      klgrad::evaluate(args...);
    });
  });
}

/// Measures logits_divergence(d, ...) with its gradient on synthetic rows of `shape` (a row
/// per token, shape.vocabulary logits each) stored in `format` beside the read-and-exp-sum
/// of the same rows.
inline result run_logits(divergence d, const batch_shape& shape,
                         number_format format = number_format::float32, const settings& how = {}) {
  result r;
  switch (format) {
    case number_format::float32: r = detail::measure_logits<float>(d, shape, how); break;
    case number_format::float64: r = detail::measure_logits<double>(d, shape, how); break;
    case number_format::bfloat16: r = detail::measure_logits<Eigen::bfloat16>(d, shape, how); break;
    case number_format::float16: r = detail::measure_logits<Eigen::half>(d, shape, how); break;
  }
  r.format = format;
  return r;
}

}  // namespace klgrad::bench
