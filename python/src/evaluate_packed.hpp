// The packed (N tokens with offsets) kernels of klgrad.evaluate, instantiated per scalar type
// by evaluate_packed_float.cpp and evaluate_packed_double.cpp.
#pragma once

#include "evaluate.hpp"

namespace klgrad::python {

template <class S>
struct packed_view : vector_map<S> {
  packed_view(const array& a, const char* name) : vector_map<S>(vector_view<S>(a, name)) {}
};

template <class T>
summary evaluate_packed(const evaluate_call& c) {
  const auto lp = vector_view<T>(c.logp, "logp"), lr = vector_view<T>(c.ref, "ref");
  const auto value = vector_view<T>(c.value, "value", true);
  const auto coef = vector_view<T>(c.coef, "coef", true);
  const auto lb = c.has_behavior ? vector_view<T>(c.behavior, "behavior") : lp;
  const auto offsets = vector_view<std::int64_t>(c.offsets, "offsets");
  return with_mask<packed_view>(c, [&](auto&&... mask) {
    return run_batch(c, packed(lp, lr, offsets, mask...), lb, value, coef);
  });
}

}  // namespace klgrad::python
