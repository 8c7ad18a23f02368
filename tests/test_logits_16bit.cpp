// Tests of 16-bit logits (bf16, fp16): the widening loads against Eigen's own conversions
// over every bit pattern, and the kernels on Eigen::bfloat16 / Eigen::half rows against the
// float kernels on the same values widened (the arithmetic after the load is the same, so
// the results are the same bit for bit), with -inf masked entries, rows at the edges of
// bf16's and fp16's ranges, and the refusals of NaN / +inf naming argument, row and value.
#include <klgrad/logits.hpp>
#include <klgrad/logits/sampled.hpp>
#include <klgrad/logits/streaming.hpp>

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

/// One full-vocabulary call on rows of S and the float call on the widened rows: values,
/// gradients and the summary equal bit for bit.
template <class S>
void check_divergence(klgrad::divergence d, const rows_t<S>& z, const rows_t<S>& zr,
                      const Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& mask,
                      const klgrad::logits_options& opt) {
  const Floats f = widened(z), fr = widened(zr);
  const Index N = z.rows(), V = z.cols();
  const auto b16 = klgrad::logit_rows(z, zr, mask);
  const auto b32 = klgrad::logit_rows(f, fr, mask);
  Eigen::ArrayXf v16(N), v32(N);
  Floats g16(N, V), g32(N, V);
  const auto s16 = klgrad::logits_divergence(d, b16, v16, opt);
  const auto s32 = klgrad::logits_divergence(d, b32, v32, opt);
  CHECK(differing(v16, v32) == 0);
  CHECK(s16.loss == s32.loss);
  CHECK(s16.mean == s32.mean);
  const auto t16 = klgrad::logits_divergence(d, b16, v16, g16, opt);
  const auto t32 = klgrad::logits_divergence(d, b32, v32, g32, opt);
  CHECK(differing(v16, v32) == 0);
  CHECK(differing(g16, g32) == 0);
  CHECK(t16.loss == t32.loss);
  CHECK(g16.isFinite().all());
}

template <class S>
void check_divergences() {
  using klgrad::divergence;
  for (Index V : vocabularies) {
    CAPTURE(V);
    const Index B = 2, T = 3;
    rows_t<S> z = random_rows<S>(B * T, V, unsigned(V) + 1);
    rows_t<S> zr = random_rows<S>(B * T, V, unsigned(V) + 2, 1.f);
    Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> mask(B, T);
    mask << 1, 1, 0, 1, 1, 1;
    std::vector<float> work(std::size_t(klgrad::logits_workspace_size<float>(V)));
    for (double tau : {1.0, 0.7}) {
      CAPTURE(tau);
      // Row 4 at the edges of S's range (as in the sampled test above), in both rows so
      // that RKL stays finite: the largest finite value, its negation, the smallest
      // subnormal and the smallest normal.
      const float top = kd::widen(std::numeric_limits<S>::max());
      const float big = tau == 0.7 ? std::min(top, 1e6f) : top;
      for (rows_t<S>* x : {&z, &zr}) {
        (*x)(4, 0) = S(big);
        (*x)(4, 1) = S(-big);
        (*x)(4, 2) = std::numeric_limits<S>::denorm_min();
        (*x)(4, V - 1) = std::numeric_limits<S>::min();
      }
      for (divergence d :
           {divergence::reverse_kl, divergence::forward_kl, divergence::jensen_shannon}) {
        CAPTURE(klgrad::to_string(d));
        klgrad::logits_options opt;
        opt.temperature = tau;
        opt.lambda = 0.3;
        opt.beta = 0.5;
        check_divergence(d, z, zr, mask, opt);
        if (d != divergence::reverse_kl) {  // the divergences that keep exponentials
          opt.workspace = work.data();
          opt.workspace_size = Index(work.size());
          check_divergence(d, z, zr, mask, opt);
        }
      }
    }
    // Rows of normalised log-probabilities stored in 16 bits (log_probs = true).
    rows_t<S> lp(B * T, V), lr(B * T, V);
    const Floats f = widened(z), fr = widened(zr);
    for (Index r = 0; r < B * T; ++r) {
      const float mz = f.row(r).maxCoeff(), mr = fr.row(r).maxCoeff();
      const float cz = mz + std::log((f.row(r) - mz).exp().sum());
      const float cr = mr + std::log((fr.row(r) - mr).exp().sum());
      for (Index j = 0; j < V; ++j) {
        lp(r, j) = S(f(r, j) - cz);
        lr(r, j) = S(fr(r, j) - cr);
      }
    }
    klgrad::logits_options opt;
    opt.log_probs = true;
    for (divergence d : {divergence::reverse_kl, divergence::forward_kl, divergence::jensen_shannon})
      check_divergence(d, lp, lr, mask, opt);
  }
}

TEST_CASE("16-bit RKL, FKL and JSD equal the float kernels on the widened logits",
          "[logits][16bit]") {
  SECTION("bf16") { check_divergences<bf16>(); }
  SECTION("fp16") { check_divergences<fp16>(); }
}

template <class S>
void check_top_k() {
  using Ids = Eigen::Array<long, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  for (Index V : vocabularies) {
    CAPTURE(V);
    const Index N = 4;
    // Rounded to 16 bits the logits tie often: K's order breaks ties by index on both sides.
    const rows_t<S> z = random_rows<S>(N, V, unsigned(V) + 7);
    const rows_t<S> zr = random_rows<S>(N, V, unsigned(V) + 8, 0.5f);
    const Floats f = widened(z), fr = widened(zr);
    Eigen::Array<int, Eigen::Dynamic, 1> mask(N);
    mask << 1, 0, 1, 1;
    const auto b16 = klgrad::logit_rows(z, zr, mask);
    const auto b32 = klgrad::logit_rows(f, fr, mask);
    for (Index k : {Index(1), std::min<Index>(V, 5), V}) {
      CAPTURE(k);
      for (klgrad::top_k_form form : klgrad::top_k_forms) {
        CAPTURE(klgrad::to_string(form));
        klgrad::logits_options opt;
        opt.temperature = 0.7;
        Ids i16(N, k), i32(N, k);
        Eigen::ArrayXf v16(N), v32(N);
        Floats g16(N, V), g32(N, V);
        const auto s16 = klgrad::top_k_divergence(form, b16, i16, v16, g16, opt);
        const auto s32 = klgrad::top_k_divergence(form, b32, i32, v32, g32, opt);
        CHECK((i16 == i32).all());
        CHECK(differing(v16, v32) == 0);
        CHECK(differing(g16, g32) == 0);
        CHECK(s16.loss == s32.loss);
        klgrad::top_k_divergence(form, b16, i16, v16, opt);  // value alone
        CHECK(differing(v16, v32) == 0);
      }
      Ids i16(N, k), i32(N, k);
      Eigen::ArrayXf v16(N), v32(N);
      klgrad::forward_kl_top_k(b16, i16, v16);
      klgrad::forward_kl_top_k(b32, i32, v32);
      CHECK((i16 == i32).all());
      CHECK(differing(v16, v32) == 0);
    }
  }
}

TEST_CASE("16-bit top-k forms equal the float kernels on the widened logits",
          "[logits][16bit][top_k]") {
  SECTION("bf16") { check_top_k<bf16>(); }
  SECTION("fp16") { check_top_k<fp16>(); }
}

TEST_CASE("16-bit full-vocabulary kernels refuse NaN and +inf naming argument, row and value",
          "[logits][16bit]") {
  rows_t<bf16> z = random_rows<bf16>(4, 30, 3), zr = random_rows<bf16>(4, 30, 4);
  zr(3, 8) = bf16(std::numeric_limits<float>::quiet_NaN());
  Eigen::ArrayXf v(4);
  Floats g(4, 30);
  const auto b = klgrad::logit_rows(z, zr, 2);
  CHECK(message_of([&] {
          klgrad::logits_divergence(klgrad::divergence::forward_kl, b, v, g);
        }) == "z_ref row 3 (sequence 1, position 1), column 8 is nan; logits must be finite or -inf");
  zr(3, 8) = bf16(0.f);
  rows_t<fp16> h = z.cast<fp16>(), hr = zr.cast<fp16>();
  h(0, 29) = fp16(inf);
  CHECK(message_of([&] {
          klgrad::logits_divergence(klgrad::divergence::jensen_shannon,
                                    klgrad::logit_rows(h, hr), v);
        }) == "z row 0, column 29 is inf; logits must be finite or -inf");
  // A value fp16 cannot hold arrives as +inf, and is refused as such.
  h(0, 29) = fp16(1e5f);
  CHECK(message_of([&] {
          klgrad::logits_divergence(klgrad::divergence::reverse_kl, klgrad::logit_rows(h, hr), v);
        }) == "z row 0, column 29 is inf; logits must be finite or -inf");
}

TEST_CASE("16-bit logits cannot take the float gradient over themselves", "[logits][16bit]") {
  // The 16-bit rows in the first half of a float buffer that is the gradient: refused before
  // anything is read or written, for the full-vocabulary and the top-k kernels.
  Floats buffer = Floats::Zero(4, 30);
  const Eigen::Map<rows_t<bf16>> z(reinterpret_cast<bf16*>(buffer.data()), 4, 30);
  const rows_t<bf16> zr = random_rows<bf16>(4, 30, 5);
  Eigen::ArrayXf v(4);
  Eigen::Array<long, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> idx(4, 3);
  const std::string want =
      "grad overlaps z, whose 16-bit entries cannot hold the float gradient: pass a separate "
      "float grad";
  CHECK(message_of([&] {
          klgrad::logits_divergence(klgrad::divergence::reverse_kl, klgrad::logit_rows(z, zr), v,
                                    buffer);
        }) == want);
  CHECK(message_of([&] {
          klgrad::top_k_divergence(klgrad::top_k_form::reverse_kl_tail,
                                   klgrad::logit_rows(z, zr), idx, v, buffer);
        }) == want);
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
