// The scalar types logits may be stored in (float, double, and the 16-bit bf16 and fp16 as
// Eigen::bfloat16 / Eigen::half), the type the kernels compute in for each, and the exact
// widening of a stored logit to it.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

namespace klgrad::detail {

/// The type the kernels compute in for logits stored as S: float for the 16-bit formats,
/// S itself for float and double.
template <class S>
struct compute_type {
  using type = S;
};
template <>
struct compute_type<Eigen::bfloat16> {
  using type = float;
};
template <>
struct compute_type<Eigen::half> {
  using type = float;
};
template <class S>
using compute_t = typename compute_type<S>::type;

/// S is one of the 16-bit formats the kernels widen.
template <class S>
inline constexpr bool is_16bit_v =
    std::is_same_v<S, Eigen::bfloat16> || std::is_same_v<S, Eigen::half>;

/// A stored logit as its compute type, exactly: every bf16 and fp16 value is a float
/// (bf16 is a float's upper 16 bits; fp16's 5-bit exponent and 10-bit mantissa fit).
inline float widen(float x) { return x; }
inline double widen(double x) { return x; }
inline float widen(Eigen::bfloat16 x) {
  const std::uint32_t bits = std::uint32_t(Eigen::numext::bit_cast<std::uint16_t>(x)) << 16;
  return Eigen::numext::bit_cast<float>(bits);
}
inline float widen(Eigen::half x) { return float(x); }

}  // namespace klgrad::detail
