// The measurement of klgrad/bench.hpp, checked by what it must do on any machine, never by
// how fast: the quartiles of known samples, the rounds and their alternating order, the
// allocation count read around every kernel call (a fake counter whose exact increments are
// known), the synthetic batches' layouts and byte counts, the split between threads, and the
// refusals as the library's error types. A program of its own (it starts threads and needs
// no kernel of klgrad_instances); budgets of a microsecond, so min_rounds decides the rounds.
#define CATCH_CONFIG_MAIN

#include <klgrad/bench.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kb = klgrad::bench;

namespace {

kb::settings tiny(int rounds = 5) {
  kb::settings how;
  how.seconds = 1e-6;
  how.min_rounds = rounds;
  return how;
}

kb::batch_shape padded(Eigen::Index b, Eigen::Index t, Eigen::Index v = 0) {
  kb::batch_shape s;
  s.sequences = b;
  s.positions = t;
  s.vocabulary = v;
  return s;
}

}  // namespace

TEST_CASE("quartiles by nearest rank", "[bench]") {
  const kb::quartiles q = kb::detail::quartiles_of({5, 1, 3, 2, 4});
  CHECK(q.q1 == 2);
  CHECK(q.median == 3);
  CHECK(q.q3 == 4);
  const kb::quartiles one = kb::detail::quartiles_of({7});
  CHECK((one.q1 == 7 && one.median == 7 && one.q3 == 7));
  const kb::quartiles none = kb::detail::quartiles_of({});
  CHECK((none.q1 == 0 && none.median == 0 && none.q3 == 0));
}

TEST_CASE("interleave: a warm-up call each, then min_rounds rounds in alternating order",
          "[bench]") {
  std::string order;
  long long counter = 0;
  kb::settings how = tiny(4);
  how.allocations = [&] { return counter; };
  std::vector<double> progress;
  how.progress = [&](double f) { progress.push_back(f); };
  const kb::detail::paired_times t = kb::detail::interleave(
      [&] {
        order += 'k';
        counter += 3;  // three "allocations" per kernel call
      },
      [&] { order += 'f'; }, how);
  CHECK(order == "kf" "fk" "kf" "fk" "kf");
  REQUIRE(t.kernel.size() == 4);
  REQUIRE(t.floor.size() == 4);
  CHECK(t.counted);
  CHECK(t.allocations == 12);  // the four timed calls only, not the warm-up
  CHECK(progress.size() == 4);
  const kb::result r = kb::detail::summarise(t, 100);
  CHECK(r.rounds == 4);
  CHECK(r.allocations_per_call == 3);
  CHECK(r.items == 100);
}

TEST_CASE("without a counter allocations are not counted (NaN)", "[bench]") {
  const kb::result r = kb::run(klgrad::parse_spec("k1-in-reward"), padded(2, 8),
                               kb::number_format::float32, tiny());
  CHECK(std::isnan(r.allocations_per_call));
  CHECK(r.rounds == 5);
}

TEST_CASE("vector sets: the build's is Eigen's packet width, the CPU runs it, rows carry both",
          "[bench]") {
  const std::string_view built = kb::compiled_vector_isa(), cpu = kb::cpu_vector_isa();
  const int lanes = Eigen::internal::packet_traits<float>::size;  // floats per packet
  if (built == "avx512")
    CHECK(lanes == 16);
  else if (built == "avx2" || built == "avx")
    CHECK(lanes == 8);
  else if (built == "none")
    CHECK(lanes == 1);
  else if (built != "sve" && built != "other")  // SVE's width is the machine's
    CHECK(lanes == 4);                          // the 128-bit sets
  // On x86 this program runs, so the CPU offers at least the build's set.
  const std::vector<std::string_view> x86 = {"sse2", "sse4", "avx", "avx2", "avx512"};
  const auto rank = [&](std::string_view name) {
    return std::find(x86.begin(), x86.end(), name) - x86.begin();
  };
  if (rank(built) < std::ptrdiff_t(x86.size())) {
    CHECK(rank(cpu) < std::ptrdiff_t(x86.size()));
    CHECK(rank(cpu) >= rank(built));
  }
  const kb::result r = kb::run(klgrad::parse_spec("k1-in-reward"), padded(2, 8),
                               kb::number_format::float32, tiny());
  CHECK(r.vector_isa == built);
  CHECK(r.cpu_vector_isa == cpu);
  const kb::result z = kb::run_logits(klgrad::divergence::reverse_kl, padded(1, 2, 8),
                                      kb::number_format::float32, tiny());
  CHECK(z.vector_isa == built);
}

TEST_CASE("sampled tokens: items, bytes per token and the floor's bytes", "[bench]") {
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss");
  const kb::result f = kb::run(s, padded(3, 16), kb::number_format::float32, tiny());
  CHECK(f.items == 48);
  CHECK(f.bytes_per_item == 17);  // logp, ref, value, coef (4 bytes) and the mask byte
  CHECK(f.floor == "triad");
  CHECK(f.format == kb::number_format::float32);
  CHECK(f.floor_bytes_per_item == Approx(17).margin(3.0 * 4 / 48));  // whole triad elements
  const kb::result d = kb::run<klgrad::k3, klgrad::k2>(
      klgrad::parse_spec("k1-both,is=detached"), padded(3, 16), kb::number_format::float64,
      tiny());
  CHECK(d.bytes_per_item == 41);  // and behaviour log-probs, 8 bytes each
  CHECK(d.format == kb::number_format::float64);
  CHECK(d.name == klgrad::to_string(klgrad::parse_spec("k1-both,is=detached")));
  for (const auto& q : {f.items_per_second, f.of_floor, d.items_per_second, d.of_floor})
    CHECK((0 < q.q1 && q.q1 <= q.median && q.median <= q.q3));
}

TEST_CASE("a packed batch cycles its lengths and cuts the last", "[bench]") {
  kb::batch_shape s;
  s.tokens = 10;
  s.lengths = {4, 3};
  const kb::detail::sampled_data<float> d(s, false);
  CHECK(d.starts == std::vector<std::int64_t>{0, 4, 7, 10});
  CHECK(d.counts.tokens == 10);
  CHECK(d.counts.sequences == 3);
  CHECK(d.bytes_per_token() == 16);  // no mask byte
  kb::batch_shape one;
  one.tokens = 5;
  CHECK(kb::detail::sampled_data<double>(one, false).starts == std::vector<std::int64_t>{0, 5});
}

TEST_CASE("threads: at most one per sequence (sampled) or row (logits)", "[bench]") {
  kb::settings how = tiny();
  how.threads = 3;
  const klgrad::spec s = klgrad::parse_spec("k2-as-loss");
  CHECK(kb::run(s, padded(2, 8), kb::number_format::float32, how).threads == 2);
  CHECK(kb::run(s, padded(5, 8), kb::number_format::float32, how).threads == 3);
  const kb::result l =
      kb::run_logits(klgrad::divergence::forward_kl, padded(1, 2, 16), kb::number_format::float32, how);
  CHECK(l.threads == 2);
  CHECK(l.items == 2);
}

TEST_CASE("logits: rows, bytes per row in every format", "[bench]") {
  for (const auto& f : kb::number_format_names) {
    const kb::result r =
        kb::run_logits(klgrad::divergence::reverse_kl, padded(2, 3, 32), f.value, tiny());
    const double s = f.value == kb::number_format::float64 ? 8
                     : f.value == kb::number_format::float32 ? 4 : 2;
    const double t = f.value == kb::number_format::float64 ? 8 : 4;  // computed in
    CHECK(r.items == 6);
    CHECK(r.format == f.value);
    CHECK(r.floor == "exp-sum");
    CHECK(r.bytes_per_item == 2 * 32 * s + 33 * t);  // z, ref; gradient row and value
    CHECK(r.floor_bytes_per_item == 2 * 32 * s);
  }
}

TEST_CASE("refusals are the library's errors", "[bench]") {
  const klgrad::spec s = klgrad::parse_spec("k1-in-reward");
  kb::settings zero = tiny();
  zero.seconds = 0;
  CHECK_THROWS_AS(kb::run(s, padded(2, 2), kb::number_format::float32, zero), klgrad::input_error);
  kb::settings none = tiny();
  none.threads = 0;
  CHECK_THROWS_AS(kb::run(s, padded(2, 2), kb::number_format::float32, none), klgrad::input_error);
  CHECK_THROWS_AS(kb::run(s, padded(0, 2)), klgrad::shape_error);
  CHECK_THROWS_AS(kb::run(s, padded(2, 2), kb::number_format::bfloat16), klgrad::input_error);
  CHECK_THROWS_AS(kb::run_logits(klgrad::divergence::reverse_kl, padded(2, 2)),
                  klgrad::shape_error);
  kb::batch_shape bad;
  bad.tokens = 4;
  bad.lengths = {2, 0};
  CHECK_THROWS_AS(kb::run(s, bad), klgrad::shape_error);
}
