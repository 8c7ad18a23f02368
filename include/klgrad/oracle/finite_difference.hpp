// Central finite differences of any exact objective of a parameter vector, to check the
// exact gradients of the oracle's targets.
#pragma once

#include "categorical.hpp"
#include "tabular.hpp"

namespace klgrad::oracle {

/// Gradient of f at x by the fourth-order central stencil
///   f'(x) ~ (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h),
/// truncation error O(h^4 f^(5)), rounding error O(eps |f| / h); h = 1e-3 balances the two
/// near 1e-12 for the O(1) smooth objectives of a softmax policy.
template <class F>
vector finite_difference_gradient(F f, const vector& x, double h = 1e-3) {
  vector g(x.size()), y = x;
  for (Index i = 0; i < x.size(); ++i) {
    auto at = [&](double step) {
      y(i) = x(i) + step;
      const double v = f(static_cast<const vector&>(y));
      y(i) = x(i);
      return v;
    };
    g(i) = (at(-2 * h) - 8 * at(-h) + 8 * at(h) - at(2 * h)) / (12 * h);
  }
  return g;
}

/// An objective of a tabular policy's logits as a function of its parameter vector:
/// f(theta) = objective(tabular::from_parameters(V, T, theta)).
template <class F>
auto of_parameters(Index vocab, Index steps, F objective) {
  return [=](const vector& theta) { return objective(tabular::from_parameters(vocab, steps, theta)); };
}

}  // namespace klgrad::oracle
