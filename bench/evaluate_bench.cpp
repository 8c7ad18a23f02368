// Throughput of klgrad::evaluate (token level) next to, in the same binary, a naive Eigen
// implementation with temporaries and two memory-bandwidth references over the same bytes.
//
// Bytes per token for the fused kernel with a byte mask: read logp, ref (2 x sizeof(T)) and
// mask (1), write value and coef (2 x sizeof(T)). "stream5" moves exactly those bytes with
// trivial arithmetic (the machine's limit for this access pattern); "triad" is McCalpin's
// a = b + s c over arrays whose total size matches.
#include "paired.hpp"

#include <klgrad/klgrad.hpp>

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

// Counts heap allocations so that the benchmark can report that the kernel makes none.
static std::atomic<long> allocations{0};
void* operator new(std::size_t n) {
  ++allocations;
  if (void* p = std::malloc(n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using mask_rows = Eigen::Array<unsigned char, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr Eigen::Index row_length = 1024;

template <class T>
struct data {
  rows<T> lp, lr, value, coef;
  mask_rows mask;
  // Log-probs in [-3, -1] from a cheap generator; outputs touched once so that no
  // benchmark pays for first-touch page faults.
  explicit data(Eigen::Index n) {
    const Eigen::Index b = std::max<Eigen::Index>(1, n / row_length), t = std::min(n, row_length);
    lp.resize(b, t);
    lr.resize(b, t);
    mask.resize(b, t);
    std::uint32_t state = 12345;
    auto uniform = [&state] {
      state = state * 1664525u + 1013904223u;
      return double(state >> 8) / double(1u << 24);
    };
    for (Eigen::Index i = 0; i < lp.size(); ++i) {
      lp.data()[i] = T(-3 + 2 * uniform());
      lr.data()[i] = T(-3 + 2 * uniform());
      mask.data()[i] = uniform() < 0.9 ? 1 : 0;
    }
    value.setZero(b, t);
    coef.setZero(b, t);
  }
  double bytes_per_token() const { return 4.0 * sizeof(T) + 1.0; }
  Eigen::Index tokens() const { return lp.size(); }
};

template <class T>
void finish(benchmark::State& state, const data<T>& d) {
  state.SetItemsProcessed(int64_t(state.iterations()) * d.tokens());
  state.SetBytesProcessed(int64_t(double(state.iterations()) * double(d.tokens()) * d.bytes_per_token()));
}

template <class T>
void fused(benchmark::State& state, const char* text) {
  data<T> d(state.range(0));
  const klgrad::spec s = klgrad::parse_spec(text);
  // Weighted specs read behaviour log-probs; ref stands in for them (same bytes per token
  // as a separate array would add, which bytes_per_token does not count: see performance.md).
  const auto batch = klgrad::padded(d.lp, d.lr, d.mask).with_behavior(d.lr);
  long allocs = 0;
  for (auto _ : state) {
    const long before = allocations.load();
    benchmark::DoNotOptimize(klgrad::evaluate(s, batch, d.value, d.coef));
    allocs += allocations.load() - before;
    benchmark::ClobberMemory();
  }
  state.counters["allocs/iter"] = double(allocs) / double(state.iterations());
  finish(state, d);
}

// The formula as one writes it first: whole-array temporaries, a separate count of the mask.
template <class T>
void naive_k3_as_loss(benchmark::State& state) {
  data<T> d(state.range(0));
  for (auto _ : state) {
    const rows<T> m = d.mask.template cast<T>();
    const T n = m.sum();
    const rows<T> s = (m != T(0)).select(d.lp - d.lr, T(0));
    const rows<T> e = (-s).expm1();
    d.value = (e + s) * m;
    d.coef = -e * m / n;
    benchmark::ClobberMemory();
  }
  finish(state, d);
}

// Reads and writes exactly the kernel's bytes with trivial arithmetic.
template <class T>
void stream5_pass(data<T>& d) {
  const Eigen::Index n = d.tokens();
  const T* lp = d.lp.data();
  const T* lr = d.lr.data();
  const unsigned char* m = d.mask.data();
  T* v = d.value.data();
  T* c = d.coef.data();
  for (Eigen::Index i = 0; i < n; ++i) {
    v[i] = lp[i] + lr[i];
    c[i] = m[i] ? lp[i] - lr[i] : T(0);
  }
  benchmark::ClobberMemory();
}

template <class T>
void stream5(benchmark::State& state) {
  data<T> d(state.range(0));
  for (auto _ : state) stream5_pass(d);
  finish(state, d);
}

// McCalpin's triad a = b + 3c over three arrays sized to move the bytes of `d`.
template <class T>
struct triad_arrays {
  Eigen::Array<T, Eigen::Dynamic, 1> a, b, c;
  explicit triad_arrays(const data<T>& d) {
    const Eigen::Index n =
        Eigen::Index(double(d.tokens()) * d.bytes_per_token() / (3.0 * sizeof(T)));
    a.setZero(n);
    b.setConstant(n, T(1));
    c.setConstant(n, T(2));
  }
  void run() {
    a = b + T(3) * c;
    benchmark::ClobberMemory();
  }
};

template <class T>
void triad(benchmark::State& state) {
  data<T> d(state.range(0));
  triad_arrays<T> t(d);
  for (auto _ : state) t.run();
  finish(state, d);
}

// The target's ratio (kernel bytes/s over triad bytes/s) measured in pairs (paired.hpp):
// every iteration times one triad and one kernel call back to back, in alternating order.
// The iteration time is the kernel's.
template <class T, class Kernel>
void of_triad(benchmark::State& state, data<T>& d, Kernel&& kernel) {
  triad_arrays<T> t(d);
  std::vector<double> ratios;
  ratios.reserve(std::size_t(state.max_iterations));
  for (auto _ : state) {
    const bool triad_first = ratios.size() % 2 == 0;
    const double before = triad_first ? paired::seconds([&] { t.run(); }) : 0.0;
    const double k = paired::seconds(kernel);
    const double after = triad_first ? 0.0 : paired::seconds([&] { t.run(); });
    ratios.push_back((before + after) / k);
    state.SetIterationTime(k);
  }
  paired::report(state, ratios, "of_triad");
  finish(state, d);
}

template <class T, class Mask>
void evaluate_of_triad(benchmark::State& state, data<T>& d, const char* text, const Mask& mask) {
  const klgrad::spec s = klgrad::parse_spec(text);
  const auto batch = klgrad::padded(d.lp, d.lr, mask);
  of_triad(state, d, [&] {
    benchmark::DoNotOptimize(klgrad::evaluate(s, batch, d.value, d.coef));
    benchmark::ClobberMemory();
  });
}

template <class T>
void fused_of_triad(benchmark::State& state, const char* text) {
  data<T> d(state.range(0));
  evaluate_of_triad(state, d, text, d.mask);
}

// The same tokens with a bool mask (the Array<bool> a C++ caller gets from a comparison):
// one byte per token as the byte mask, read through views/batch.hpp's mask_entries().
void of_triad_float_bool_mask(benchmark::State& state, const char* text) {
  data<float> d(state.range(0));
  const Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> mask = d.mask != 0;
  evaluate_of_triad(state, d, text, mask);
}

template <class T>
void stream5_of_triad(benchmark::State& state) {
  data<T> d(state.range(0));
  of_triad(state, d, [&] { stream5_pass(d); });
}

void fused_float(benchmark::State& state, const char* text) { fused<float>(state, text); }
void fused_double(benchmark::State& state, const char* text) { fused<double>(state, text); }
void of_triad_float(benchmark::State& state, const char* text) { fused_of_triad<float>(state, text); }
void of_triad_double(benchmark::State& state, const char* text) { fused_of_triad<double>(state, text); }

void sizes(benchmark::internal::Benchmark* b) {
  for (int p = 10; p <= 26; p += 2) b->Arg(int64_t(1) << p);
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}
void two_sizes(benchmark::internal::Benchmark* b) {
  b->Arg(int64_t(1) << 16)->Arg(int64_t(1) << 26)->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK_TEMPLATE(triad, float)->Apply(sizes);
BENCHMARK_TEMPLATE(stream5, float)->Apply(sizes);
BENCHMARK_CAPTURE(fused_float, k3_as_loss, "k3-as-loss")->Apply(sizes);
BENCHMARK_TEMPLATE(naive_k3_as_loss, float)->Apply(sizes);
BENCHMARK_TEMPLATE(triad, double)->Apply(two_sizes);
BENCHMARK_TEMPLATE(stream5, double)->Apply(two_sizes);
BENCHMARK_CAPTURE(fused_double, k3_as_loss, "k3-as-loss")->Apply(two_sizes);
BENCHMARK_TEMPLATE(naive_k3_as_loss, double)->Apply(two_sizes);

#define KLGRAD_BENCH_TERM(name, text)                                   \
  BENCHMARK_CAPTURE(fused_float, name, text)->Apply(two_sizes);         \
  BENCHMARK_CAPTURE(fused_double, name, text)->Apply(two_sizes);
KLGRAD_BENCH_TERM(k1_in_reward, "k1-in-reward")
KLGRAD_BENCH_TERM(k1_as_loss, "k1-as-loss")
KLGRAD_BENCH_TERM(k1_both, "k1-both")
KLGRAD_BENCH_TERM(k2_in_reward, "k2-in-reward")
KLGRAD_BENCH_TERM(k2_as_loss, "k2-as-loss")
KLGRAD_BENCH_TERM(k2_both, "k2-both")
KLGRAD_BENCH_TERM(k3_in_reward, "k3-in-reward")
KLGRAD_BENCH_TERM(k3_both, "k3-both")
KLGRAD_BENCH_TERM(abs_in_reward, "abs-in-reward")
KLGRAD_BENCH_TERM(abs_as_loss, "abs-as-loss")
KLGRAD_BENCH_TERM(abs_both, "abs-both")
KLGRAD_BENCH_TERM(k3_k2_as_loss, "k3~k2-as-loss")
KLGRAD_BENCH_TERM(k3_as_loss_detached, "k3-as-loss,is=detached")
KLGRAD_BENCH_TERM(k3_as_loss_verl, "k3-as-loss,preset=verl")

// Issue 2's target, float k3-as-loss with mask at 2^26 tokens over the triad, measured in
// pairs (21 pairs, about 2 s a benchmark). Beside it: stream5 (the access pattern itself),
// k1-in-reward and k2-as-loss (almost no arithmetic: the ceiling of this kernel's loop), the
// token-sum mode (no count of the mask before the pass), verl's clamps, double, and a bool
// mask.
void pairs_at_2_26(benchmark::internal::Benchmark* b) {
  b->Arg(int64_t(1) << 26)->Iterations(21)->UseManualTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(stream5_of_triad, float)->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float, k3_as_loss, "k3-as-loss")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float, k1_in_reward, "k1-in-reward")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float, k2_as_loss, "k2-as-loss")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float, k3_as_loss_token_sum, "k3-as-loss,agg=token-sum")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float, k3_as_loss_verl, "k3-as-loss,preset=verl")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_double, k3_as_loss, "k3-as-loss")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float_bool_mask, k3_as_loss, "k3-as-loss")->Apply(pairs_at_2_26);
BENCHMARK_CAPTURE(of_triad_float_bool_mask, k1_in_reward, "k1-in-reward")->Apply(pairs_at_2_26);

BENCHMARK_MAIN();
