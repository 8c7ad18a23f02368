// Tests of normal_log.hpp against the double-precision std::log, rounded to float (an
// independent implementation): every float in [0.5, 2), where the reduction to
// m in [sqrt(1/2), sqrt(2)) and the polynomial are exercised for every mantissa, and a
// stride through every binade of the normal range (each from its power of two on), where
// k ln 2 adds its rounding.
#include <klgrad/logits/normal_log.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

namespace ei = Eigen::internal;
using P = ei::packet_traits<float>::type;
constexpr int L = ei::packet_traits<float>::size;

float from_bits(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

/// Largest error of log_of_normal over xs, in units in the last place of the correctly
/// rounded result (the spacing of floats at float(log x), exact log taken in double).
double worst_ulps(const std::vector<float>& xs, float& worst_x) {
  double worst = 0;
  float out[L];
  for (std::size_t i = 0; i + L <= xs.size(); i += L) {
    ei::pstoreu(out, klgrad::detail::log_of_normal(ei::ploadu<P>(xs.data() + i)));
    for (int l = 0; l < L; ++l) {
      const double exact = std::log(double(xs[i + std::size_t(l)]));
      const float rounded = float(exact);
      const double ulp = double(std::nextafter(std::abs(rounded), 1e30f)) - std::abs(double(rounded));
      const double e = std::abs(double(out[l]) - exact) / ulp;
      if (e > worst) worst = e, worst_x = xs[i + std::size_t(l)];
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("log_of_normal: every float from 0.5 up to 2 within one ulp", "[normal_log]") {
  std::vector<float> xs;
  xs.reserve(std::size_t(1) << 24);
  for (std::uint32_t b = 0x3f000000u; b < 0x40000000u; ++b) xs.push_back(from_bits(b));
  float at = 0;
  const double worst = worst_ulps(xs, at);
  INFO("worst " << worst << " ulp at x = " << at);
  CHECK(worst <= 1.0);
  CHECK(worst > 0.0);  // the check measures something: float cannot round log exactly everywhere
}

TEST_CASE("log_of_normal: every binade of the normal range within one ulp", "[normal_log]") {
  std::vector<float> xs;
  for (std::uint32_t e = 1; e <= 254; ++e)
    for (std::uint32_t m = 0; m < (1u << 23); m += 2039)  // a prime stride: all residues mixed
      xs.push_back(from_bits((e << 23) | m));
  xs.push_back(std::numeric_limits<float>::min());
  xs.push_back(std::numeric_limits<float>::max());
  while (xs.size() % L != 0) xs.push_back(1.0f);
  float at = 0;
  const double worst = worst_ulps(xs, at);
  INFO("worst " << worst << " ulp at x = " << at);
  CHECK(worst <= 1.0);
}

TEST_CASE("log_of_normal: scalars (a row's tail) go to std::log", "[normal_log]") {
  CHECK(klgrad::detail::log_of_normal(0.25f) == std::log(0.25f));
  CHECK(klgrad::detail::log_of_normal(3.0) == std::log(3.0));
}
