// The padded (B x T) kernels of klgrad.evaluate, instantiated per scalar type by
// evaluate_padded_float.cpp and evaluate_padded_double.cpp.
#pragma once

#include "evaluate.hpp"

namespace klgrad::python {

template <class S>
struct padded_view : rows_map<S> {
  padded_view(const array& a, const char* name) : rows_map<S>(rows_view<S>(a, name)) {}
};

template <class T>
summary evaluate_padded(const evaluate_call& c) {
  const auto lp = rows_view<T>(c.logp, "logp"), lr = rows_view<T>(c.ref, "ref");
  const auto value = rows_view<T>(c.value, "value", true);
  const auto coef = rows_view<T>(c.coef, "coef", true);
  const auto lb = c.has_behavior ? rows_view<T>(c.behavior, "behavior") : lp;
  return with_mask<padded_view>(c, [&](auto&&... mask) {
    return run_batch(c, padded(lp, lr, mask...), lb, value, coef);
  });
}

}  // namespace klgrad::python
