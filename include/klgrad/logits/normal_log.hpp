// The natural logarithm of a packet of positive normal floats, about three times cheaper
// than Eigen's plog (which also handles zero, denormals, negative numbers, inf and NaN):
// the Jensen-Shannon pass takes one per vocabulary entry, where Eigen's cost more than three
// of the four exponentials around it.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <type_traits>

namespace klgrad::detail {

/// log(x) for x a positive normal finite number (x >= the smallest normal number), to within
/// one unit in the last place for float (tests/test_normal_log.cpp checks every float in
/// [0.5, 2) and a sample of every binade against a double-precision log). Outside that
/// domain the result is unspecified: callers clamp first. Packets of double, and scalars,
/// go to Eigen's plog and std::log.
///
/// Method (Cephes' logf): write x = 2^k m with m in [sqrt(1/2), sqrt(2)) straight from the
/// bits (subtracting the bits of sqrt(1/2) makes the exponent field carry k for that
/// interval), then log x = k ln 2 + log(1 + f), f = m - 1 in [-0.293, 0.415), with
/// log(1 + f) = f - f^2/2 + f^3 P(f), P Cephes' degree-8 minimax polynomial, and ln 2 split
/// into 0.693359375 (exact times any k) and a small correction.
template <class P>
P log_of_normal(const P& x) {
  namespace ei = Eigen::internal;
  using T = typename ei::unpacket_traits<P>::type;
  if constexpr (!std::is_same_v<T, float>) {
    return ei::plog(x);
  } else {
    using I = typename ei::unpacket_traits<P>::integer_packet;
    constexpr int bits_of_sqrt_half = 0x3f3504f3;  // sqrt(1/2) rounded to float
    const I bits = ei::preinterpret<I>(x);
    const I k = ei::parithmetic_shift_right<23>(ei::psub(bits, ei::pset1<I>(bits_of_sqrt_half)));
    const P m = ei::preinterpret<P>(ei::psub(bits, ei::plogical_shift_left<23>(k)));
    const P f = ei::psub(m, ei::pset1<P>(1.0f));
    const P kf = ei::pcast<I, P>(k);
    P poly = ei::pset1<P>(7.0376836292e-2f);
    for (const float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f,
                          1.4249322787e-1f, -1.6668057665e-1f, 2.0000714765e-1f,
                          -2.4999993993e-1f, 3.3333331174e-1f})
      poly = ei::pmadd(poly, f, ei::pset1<P>(c));
    const P f2 = ei::pmul(f, f);
    P small = ei::pmul(ei::pmul(poly, f2), f);                   // f^3 P(f)
    small = ei::pmadd(ei::pset1<P>(-0.5f), f2, small);           // - f^2 / 2
    small = ei::pmadd(kf, ei::pset1<P>(-2.12194440e-4f), small);  // k (ln 2 - 0.693359375)
    return ei::pmadd(kf, ei::pset1<P>(0.693359375f), ei::padd(f, small));
  }
}
inline float log_of_normal(float x) { return std::log(x); }
inline double log_of_normal(double x) { return std::log(x); }

}  // namespace klgrad::detail
