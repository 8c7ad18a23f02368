// The batch kernel's public entry: for every token of a padded or packed batch, the value a
// spec logs and the coefficient d(loss)/d(log pi) a trainer back-propagates, plus a summary.
// The layers below it live in kernel/: spec -> dispatch and plan (plan.hpp, run.hpp) ->
// passes over each sequence's chunks (passes.hpp, estimates.hpp, weights.hpp, chunk.hpp) ->
// the adapter (coefficient.hpp, core/adapter.hpp) -> the caller's arrays.
#pragma once

#include "core/estimators.hpp"
#include "kernel/evaluate_options.hpp"
#include "kernel/run.hpp"
#include "spec/spec.hpp"
#include "views/batch.hpp"

// The kernels compiled once (instances.hpp), declared extern where the program asks for it.
#ifdef KLGRAD_EXTERN_TEMPLATES
#include "instances.hpp"
#endif

#include <Eigen/Core>
#include <type_traits>

namespace klgrad {

/// Evaluates a spec on a batch. Writes, for every position, value (the divergence estimate
/// the configuration logs) and coef (beta * a_{b,t} * c_{b,t}, the detached coefficient to
/// back-propagate through log pi: loss_surrogate = sum coef * logp); masked positions get 0.
/// value and coef are caller-owned arrays (or Maps) of the batch's shape and scalar type.
template <class Batch, class V, class C>
summary evaluate(const spec& s, const Batch& batch, const Eigen::DenseBase<V>& value,
                 const Eigen::DenseBase<C>& coef, const options& opt = {}) {
  using T = typename Batch::scalar;
  static_assert(std::is_same_v<typename V::Scalar, T> && std::is_same_v<typename C::Scalar, T>,
                "klgrad: value and coef must have the batch's scalar type");
  return detail::dispatch(s, batch, detail::output_view(batch, value, "value"),
                          detail::output_view(batch, coef, "coef"), opt);
}

/// evaluate() with estimator types of your own (the estimator concept, core/estimators.hpp): Ev
/// gives the value (and the in-reward penalty), Eg the derivative the as-loss part
/// back-propagates. The spec gives everything else (placement, weights, clamps, level,
/// aggregation, beta); its estimator names are not used. The runtime path runs the same
/// kernel, with the shipped estimators' types.
template <class Ev, class Eg = Ev, class Batch, class V, class C,
          std::enable_if_t<!is_kl_term_v<Ev>, int> = 0>
summary evaluate(const spec& s, const Batch& batch, const Eigen::DenseBase<V>& value,
                 const Eigen::DenseBase<C>& coef, const options& opt = {}) {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  using T = typename Batch::scalar;
  static_assert(std::is_same_v<typename V::Scalar, T> && std::is_same_v<typename C::Scalar, T>,
                "klgrad: value and coef must have the batch's scalar type");
  return detail::run<Ev, Eg>(s, batch, detail::output_view(batch, value, "value"),
                             detail::output_view(batch, coef, "coef"), opt);
}

/// evaluate() of a term type (core/terms.hpp): evaluate<as_loss<k3>>(s, ...) gives the
/// coefficients of Term::coefficient() under the spec's weights, clamps, level and
/// aggregation. The term's placement and estimators replace the spec's term, and the spec
/// is checked again with that placement (spec_error, as parse_spec() words it).
template <class Term, class Batch, class V, class C,
          std::enable_if_t<is_kl_term_v<Term>, int> = 0>
summary evaluate(const spec& s, const Batch& batch, const Eigen::DenseBase<V>& value,
                 const Eigen::DenseBase<C>& coef, const options& opt = {}) {
  spec config = s;
  config.term.where = Term::where;
  using Ev = typename Term::value_estimator;
  using Eg = typename Term::gradient_estimator;
  if constexpr (has_runtime_id<Ev>::value && has_runtime_id<Eg>::value) {
    config.term.value_estimator = Ev::id;
    config.term.gradient_estimator = Eg::id;
  }
  detail::validate(config, to_string(config));
  return evaluate<Ev, Eg>(config, batch, value, coef, opt);
}

}  // namespace klgrad
