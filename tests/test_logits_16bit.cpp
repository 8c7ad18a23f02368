// Tests of 16-bit logits (bf16, fp16): the widening loads against Eigen's own conversions
// over every bit pattern, and the kernels on Eigen::bfloat16 / Eigen::half rows against the
// float kernels on the same values widened (the arithmetic after the load is the same, so
// the results are the same bit for bit), with -inf masked entries, rows at the edges of
// bf16's and fp16's ranges, and the refusals of NaN / +inf naming argument, row and value.
#include <klgrad/sampled.hpp>
#include <klgrad/streaming.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
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


using bf16 = Eigen::bfloat16;
using fp16 = Eigen::half;
template <class T>
using rows_t = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Floats = rows_t<float>;
constexpr float inf = std::numeric_limits<float>::infinity();

/// Random logits N x V (normal, sd 3, around `centre`) already rounded to S, so that the
/// float copy holds exactly the widened values; every 7th entry of each row -inf (a masked
/// vocabulary entry), and row 1 at S's largest finite magnitudes when `edges`.
template <class S>
rows_t<S> random_rows(Index N, Index V, unsigned seed, float centre = 0.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(centre, 3.f);
  rows_t<S> z(N, V);
  for (Index r = 0; r < N; ++r)
    for (Index j = 0; j < V; ++j) z(r, j) = S(j % 7 == 3 ? -inf : d(rng));
  return z;
}

template <class S>
Floats widened(const rows_t<S>& z) {
  Floats f(z.rows(), z.cols());
  for (Index r = 0; r < z.rows(); ++r)
    for (Index j = 0; j < z.cols(); ++j) f(r, j) = kd::widen(z(r, j));
  return f;
}

/// Equal bit for bit (NaN nowhere expected).
template <class A, class B>
Index differing(const A& a, const B& b) {
  Index n = 0;
  for (Index i = 0; i < a.size(); ++i) n += bits_of(a.data()[i]) != bits_of(b.data()[i]);
  return n;
}

/// The vocabularies: shorter than a packet, a packet and a tail, several 8 KiB blocks and a
/// tail (the blocks are the float kernel's, 2,048 entries, for 16-bit rows too).
constexpr Index vocabularies[] = {3, 13, 5000};

template <class S>
void check_sampled() {
  for (Index V : vocabularies) {
    CAPTURE(V);
    const Index N = 5;
    rows_t<S> z = random_rows<S>(N, V, unsigned(V));
    Eigen::Array<std::int64_t, Eigen::Dynamic, 1> ids(N);
    for (Index r = 0; r < N; ++r) ids(r) = (r * 5 + 1) % V;
    ids(2) = 3 % V;  // a -inf logit when V > 3: logp = -inf
    Eigen::ArrayXf got(N), want(N), coef(N);
    for (Index r = 0; r < N; ++r) coef(r) = 0.25f * float(r) - 0.5f;
    for (double tau : {1.0, 0.7, 2.0}) {
      CAPTURE(tau);
      // Row 1 at the edges of S's range: its largest finite value next to its negation and
      // the smallest subnormal (bf16: 3.39e38, fp16: 65504). With a temperature that is not
      // a power of two the largest is 1e6: beyond |z / tau| ~ 2.7e8 the float kernel's own
      // shift is off by more than its slack where the compiler fuses z * (1 / tau) - shift
      // (-march with FMA), a limit of the float kernel that the 16-bit path shares.
      const float top = kd::widen(std::numeric_limits<S>::max());
      const float big = tau == 0.7 ? std::min(top, 1e6f) : top;
      z(1, 0) = S(big);
      z(1, 1) = S(-big);
      z(1, 2) = std::numeric_limits<S>::denorm_min();
      const Floats f = widened(z);
      klgrad::selective_log_softmax(z, ids, got, tau);
      klgrad::selective_log_softmax(f, ids, want, tau);
      CHECK(differing(got, want) == 0);
      Floats g16(N, V), g32(N, V);
      klgrad::sampled_logits_gradient(z, ids, coef, g16, tau);
      klgrad::sampled_logits_gradient(f, ids, coef, g32, tau);
      CHECK(differing(g16, g32) == 0);
      CHECK(g16.isFinite().all());
    }
  }
}

TEST_CASE("16-bit selective log-softmax and sampled gradient equal the float paths on the "
          "widened logits",
          "[logits][16bit][sampled]") {
  SECTION("bf16") { check_sampled<bf16>(); }
  SECTION("fp16") { check_sampled<fp16>(); }
}

/// The message of the input_error f raises.
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const klgrad::input_error& e) {
    return e.what();
  }
  return "(no input_error)";
}

TEST_CASE("16-bit sampled paths refuse NaN and +inf naming argument, row and value",
          "[logits][16bit][sampled]") {
  rows_t<bf16> z = random_rows<bf16>(3, 40, 1);
  Eigen::Array<std::int64_t, Eigen::Dynamic, 1> ids = Eigen::Array<std::int64_t, 3, 1>(0, 1, 2);
  Eigen::ArrayXf logp(3);
  z(2, 17) = bf16(std::numeric_limits<float>::quiet_NaN());
  CHECK(message_of([&] { klgrad::selective_log_softmax(z, ids, logp); }) ==
        "z row 2, column 17 is nan; logits must be finite or -inf");
  z(2, 17) = bf16(0.f);
  z(1, 39) = bf16(inf);
  rows_t<fp16> h = z.cast<fp16>();
  Eigen::ArrayXf coef = Eigen::ArrayXf::Ones(3);
  Floats g(3, 40);
  CHECK(message_of([&] { klgrad::sampled_logits_gradient(h, ids, coef, g); }) ==
        "z row 1, column 39 is inf; logits must be finite or -inf");
}

}  // namespace
