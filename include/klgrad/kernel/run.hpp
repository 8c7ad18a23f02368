// The kernel's entry: the output views of a batch, the plan and the counts, the loop over
// sequences, and the dispatch from a spec's estimator names to the kernel's template
// arguments.
#pragma once

#include "../views/batch.hpp"
#include "passes.hpp"
#include "plan.hpp"

#include <Eigen/Core>
#include <algorithm>

namespace klgrad::detail {

/// A writable view of an output array (Eigen's idiom for writing through a const
/// reference, so that temporaries such as Maps can be passed).
template <class T, class M, class V>
strided_rows<T> output_view(const padded_batch<T, M>& b, const Eigen::DenseBase<V>& x,
                            const char* name) {
  const auto v = rows_of(x, name);
  require_same_shape(b.logp, "logp", v, name);
  return {const_cast<T*>(v.data), v.rows, v.cols, v.stride};
}
template <class T, class M, class O, class V>
strided_rows<T> output_view(const packed_batch<T, M, O>& b, const Eigen::DenseBase<V>& x,
                            const char* name) {
  const auto v = vector_of(x, name);
  if (v.cols != b.tokens)
    raise<shape_error>(cat("shape mismatch: logp has ", b.tokens, " tokens but ", name,
                           " has ", v.cols));
  return {const_cast<T*>(v.data), v.rows, v.cols, v.stride};
}

/// Counts what the aggregation needs before the first coefficient and the caller did not
/// give: N_tokens for token-mean, B_nonempty for the sequence means (the pass counts both
/// anyway; check_counts() compares the caller's with them at the end).
template <class Batch, class T>
void count_batch(const Batch& batch, plan<T>& p) {
  const bool tokens = needs_tokens(p), sequences = needs_sequences(p);
  if (!tokens && !sequences) return;
  // Without token-mean only whether a sequence is empty matters, which any_valid tells at
  // the first valid token.
  const token_count n = count_tokens(batch.sequences(), [&](Index b) {
    const auto q = batch.sequence(b);
    return tokens ? count_valid(q.mask, q.size) : Index(any_valid(q.mask, q.size));
  });
  if (tokens) p.tokens = n.tokens;
  if (sequences) p.sequences = n.sequences;
}

/// The kernel for estimators Ev (value) and Eg (gradient): plan, count, then each sequence
/// through its pass.
template <class Ev, class Eg, class Batch, class T>
summary run(const spec& config, const Batch& batch, const strided_rows<T>& value,
            const strided_rows<T>& coef, const options& opt) {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  // An empty batch has no data to tell whether behaviour log-probs were given.
  const bool empty = batch.sequences() == 0 || batch.positions() == 0;
  plan<T> p = make_plan<Ev, Eg, T>(config, opt, batch.has_behavior() || empty);
  count_batch(batch, p);
  summary out;
  chunk<T> c;
  if (!p.weighted) {  // fill() leaves the weights alone then
    std::fill(c.used, c.used + chunk_size, T(1));
    std::fill(c.grad, c.grad + chunk_size, T(0));
  }
  double total = 0.0;
  const auto layout = batch.layout();
  for (Index b = 0; b < batch.sequences(); ++b) {
    auto q = batch.sequence(b);
    if (p.behavior == behavior_source::logp) q.behavior = q.logp;
    total = saturated(total + run_sequence<Ev, Eg>(q, layout.row(value, b), layout.row(coef, b),
                                                   p, c, out));
  }
  check_counts(opt.counts, out.tokens, out.sequences);
  out.kl = out.tokens > 0 ? total / double(out.tokens) : 0.0;
  out.kl_sequence = out.sequences > 0 ? total / double(out.sequences) : 0.0;
  return out;
}

/// The spec's estimators, from run-time values to the kernel's template arguments. The one
/// function per batch type that instantiates every estimator pair's kernel: klgrad/instances.hpp
/// compiles it once for a whole program.
template <class Batch, class T>
summary dispatch(const spec& config, const Batch& batch, const strided_rows<T>& value,
                 const strided_rows<T>& coef, const options& opt) {
  return visit(config.term.value_estimator, [&](auto a) {
    return visit(config.term.gradient_estimator, [&](auto b) {
      return run<decltype(a), decltype(b)>(config, batch, value, coef, opt);
    });
  });
}

}  // namespace klgrad::detail
