// The adapter: any loss form of a KL term, with its importance weighting, as the one
// per-token coefficient on grad log pi that it back-propagates. The kernel, explain and the
// typed score_function take the mapping from here (the tests' reference implementation
// keeps its own, to stay an independent check).
#pragma once

#include "importance.hpp"
#include "terms.hpp"

namespace klgrad {

/// The two pieces every weighting is built from (a placement's parts a term lacks are left
/// out, not multiplied by 0: 0 * inf is NaN). Each hands its result to emit and returns what
/// emit returns, so that the caller picks an expression once and reuses it (the kernel's
/// packet loop, explain's weights).
///
/// placed(): [reward] r + [loss] l, the run-time placement's sum of its parts (placed_sum,
/// core/terms.hpp). With r = R, l = D it is the coefficient of a token no weight multiplies;
/// with r = R, l = A it is X, what a differentiable weight multiplies in the surrogate
/// (sum_t u_t X_t).
template <class R, class L, class Emit>
decltype(auto) placed(placement where, const R& reward_part, const L& loss_part, Emit&& emit) {
  return visit(where, [&](auto at) -> decltype(auto) {
    return emit(placed_sum<decltype(at)::value>(reward_part, loss_part));
  });
}

/// with_weight_gradient(): C = W + [loss] u D under a differentiable weight, W the part that
/// comes through the weights (g X for a token's own weight; for prefix and sequence-mean
/// weights, the sum over the tokens whose weight depends on this one: the level passes').
template <class W, class D, class U, class Emit>
decltype(auto) with_weight_gradient(placement where, const W& through_weight,
                                    const D& loss_derivative, const U& used, Emit&& emit) {
  if (has_loss_part(where)) return emit(through_weight + used * loss_derivative);
  return emit(through_weight);
}

/// adapt(): the coefficient C on grad log pi of a token's surrogate loss (weighting's doc,
/// core/importance.hpp)
///   none:           L = [reward] sg(R) lp + [loss] A               C = [reward] R + [loss] D
///   detached:       L = sg(u) ([reward] sg(R) lp + [loss] A)       C = u ([reward] R + [loss] D)
///   differentiable: L = u ([reward] sg(R) + [loss] A)              C = g ([reward] R + [loss] A)
///                                                                      + [loss] u D
/// with R the in-reward penalty, A the as-loss term's value and D its derivative (at the
/// token's level), u the weight the token uses (after is-clip and is-mask) and g = du/dlp
/// (u itself for an exact token weight, 0 where is-clip or is-mask is active; the weight's
/// other derivatives, to earlier tokens, are the level passes' business: they call placed()
/// and with_weight_gradient() themselves).
///
/// Each argument is a scalar or an Eigen array expression; the result goes to emit(C), so
/// that every weighting can build its own expression type. C is linear in (R, A, D): with
/// unit R, A, D it gives the weights of the three parts (explain's use).
template <class R, class A, class D, class U, class G, class Emit>
void adapt(placement where, weighting mode, const R& reward, const A& loss_value,
           const D& loss_derivative, const U& used, const G& used_gradient, Emit&& emit) {
  switch (mode) {
    case weighting::none:
      placed(where, reward, loss_derivative, emit);
      return;
    case weighting::detached:
      placed(where, reward, loss_derivative, [&](const auto& c) { emit(used * c); });
      return;
    case weighting::differentiable:
      placed(where, reward, loss_value, [&](const auto& x) {
        with_weight_gradient(where, used_gradient * x, loss_derivative, used, emit);
      });
      return;
  }
}

/// The weights of a coefficient on its parts: C = reward R + loss_value A + loss_derivative D.
struct score_weights {
  double reward = 0, loss_value = 0, loss_derivative = 0;
};

/// adapt()'s weights for a token whose weight u has derivative g.
inline score_weights score_function_weights(placement where, weighting mode, double used,
                                            double used_gradient) {
  score_weights w;
  auto at = [&](double r, double a, double d) {
    double c = 0;
    adapt(where, mode, r, a, d, used, used_gradient, [&](double x) { c = x; });
    return c;
  };
  w.reward = at(1, 0, 0);
  w.loss_value = at(0, 1, 0);
  w.loss_derivative = at(0, 0, 1);
  return w;
}

/// The adapter as a type: a term (kl_term: in_reward<E>, as_loss<Ev, Eg>, both<Ev, Eg>) under
/// a weighting, as the per-token coefficient on grad log pi, on scalars. For a token with
/// log-ratio s and weight u (after is-clip and is-mask) whose derivative d u / d lp is g
/// (u for an exact token weight, 0 where is-clip or is-mask is active):
///   score_function<as_loss<k3>, weighting::differentiable>::coefficient(s, u, g)
///     = g k3(s) + u k3'(s).
/// R = A = Ev::value(s) and D = Eg::derivative(s) at token level; adapt() does the rest.
template <class Term, weighting Mode>
struct score_function {
  using term = Term;
  static constexpr weighting mode = Mode;

  template <class T>
  static T coefficient(T s, T used = T(1), T used_gradient = T(0)) {
    using Ev = typename Term::value_estimator;
    using Eg = typename Term::gradient_estimator;
    T out = 0;
    const T value = Ev::value(s);
    adapt(Term::where, Mode, value, value, Eg::derivative(s), used, used_gradient,
          [&](T c) { out = c; });
    return out;
  }
};

}  // namespace klgrad
