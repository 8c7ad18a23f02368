// klgrad.evaluate: the checked arguments of one call, and the kernels' entry points for each
// scalar type and layout (one translation unit each, so that they compile in parallel).
#pragma once

#include "binding.hpp"

#include <klgrad/evaluate.hpp>

#include <cstdint>

namespace klgrad::python {

/// The scalar type of a mask, as the kernels read it (signed and unsigned integers of one
/// width read alike: nonzero = valid).
enum class mask_kind { none, u8, i32, i64, f32, f64 };

/// The arguments of evaluate(), checked: logp, ref (and behavior) of one float dtype, outputs
/// of that dtype, offsets as contiguous int64.
struct evaluate_call {
  const spec* s = nullptr;
  array logp, ref, behavior, mask, offsets, value, coef;
  bool has_behavior = false;
  bool packed = false;  ///< offsets given: 1-D arrays of N tokens
  mask_kind mask_type = mask_kind::none;
  options opt;
};

template <class T>
summary evaluate_padded(const evaluate_call& c);
template <class T>
summary evaluate_packed(const evaluate_call& c);

/// Runs the kernel on a batch (GIL released), with the behaviour log-probs when given.
template <class Batch, class View, class V, class C>
summary run_batch(const evaluate_call& c, const Batch& batch, const View& behavior, const V& value,
                  const C& coef) {
  if (c.has_behavior) {
    const auto weighted = batch.with_behavior(behavior);
    nb::gil_scoped_release unlocked;
    return evaluate(*c.s, weighted, value, coef, c.opt);
  }
  nb::gil_scoped_release unlocked;
  return evaluate(*c.s, batch, value, coef, c.opt);
}

/// Calls make(mask view) with the mask seen as its kernel scalar, or make() without one.
template <template <class> class View, class Make>
summary with_mask(const evaluate_call& c, Make&& make) {
  auto view = [&](auto tag) { return View<decltype(tag)>(c.mask, "mask"); };
  switch (c.mask_type) {
    case mask_kind::none: break;
    case mask_kind::u8: return make(view(std::uint8_t{}));
    case mask_kind::i32: return make(view(std::int32_t{}));
    case mask_kind::i64: return make(view(std::int64_t{}));
    case mask_kind::f32: return make(view(float{}));
    case mask_kind::f64: return make(view(double{}));
  }
  return make();
}

}  // namespace klgrad::python
