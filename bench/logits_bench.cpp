// Full-vocabulary kernels (logits.hpp) next to what bounds them on this machine: a plain read
// of the same bytes and a vectorised exp-and-sum over the same number of elements, plus a
// naive materialising Eigen composite; prints the ratios after the table. The 16-bit rows
// (bf16, fp16) of the targets' shape are timed against their own bound and against the
// float kernel on the same values, in the same iterations.
#include "paired.hpp"

#include <klgrad/logits.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using klgrad::Index;
using Rows = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowsMap = Eigen::Map<Rows>;
using Flat = Eigen::Map<const Eigen::ArrayXf>;

constexpr Index vocabularies[] = {32000, 151936};
constexpr Index row_counts[] = {64, 256, 1024, 4096};
/// The largest shape kept in memory: rows * V elements per array (three arrays). 4096 rows
/// of V = 151,936 would need 7.5 GB on a shared machine, so that shape is skipped.
constexpr Index pool_elements = Index(1024) * 151936;

/// One pool of inputs and outputs shared by every benchmark (filled once).
struct pool {
  std::unique_ptr<float[]> z, ref, grad;
  Eigen::ArrayXf value;
  /// The workspace for the largest V (the caller's memory, as a trainer would keep it
  /// across calls).
  std::vector<float> work;
  pool() : z(new float[pool_elements]), ref(new float[pool_elements]), grad(new float[pool_elements]),
           value(4096), work(std::size_t(klgrad::logits_workspace_size<float>(151936))) {
    std::mt19937 rng(7);
    std::normal_distribution<float> logit(0.f, 2.f), noise(0.f, 0.5f);
    for (Index i = 0; i < pool_elements; ++i) {
      z[i] = logit(rng);
      ref[i] = z[i] + noise(rng);
      grad[i] = 0.f;
    }
  }
};
pool& data() {
  static pool p;
  return p;
}

bool fits(Index v, Index n) { return v * n <= pool_elements; }

void account(benchmark::State& state, Index v, Index n, int arrays) {
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  state.SetBytesProcessed(int64_t(state.iterations()) * n * v * arrays * Index(sizeof(float)));
  state.counters["V"] = double(v);
  state.counters["rows"] = double(n);
}

/// (a) a plain read of the same bytes: sum of z and z_ref.
void read_once(Index v, Index n) {
  pool& p = data();
  float s = Flat(p.z.get(), n * v).sum() + Flat(p.ref.get(), n * v).sum();
  benchmark::DoNotOptimize(s);
}
void read_sum(benchmark::State& state, Index v, Index n) {
  for (auto _ : state) read_once(v, n);
  account(state, v, n, 2);
}

/// (b) a vectorised exp-and-sum over the same number of elements.
void exp_once(Index v, Index n) {
  pool& p = data();
  float s = Flat(p.z.get(), n * v).exp().sum() + Flat(p.ref.get(), n * v).exp().sum();
  benchmark::DoNotOptimize(s);
}
void exp_sum(benchmark::State& state, Index v, Index n) {
  for (auto _ : state) exp_once(v, n);
  account(state, v, n, 2);
}

/// A divergence as benchmarked: with or without the workspace.
struct kind {
  klgrad::divergence d;
  const char* name;
  bool workspace;
};
constexpr kind kinds[] = {{klgrad::divergence::reverse_kl, "rkl", false},
                          {klgrad::divergence::forward_kl, "fkl", false},
                          {klgrad::divergence::forward_kl, "fkl_ws", true},
                          {klgrad::divergence::jensen_shannon, "jsd", false},
                          {klgrad::divergence::jensen_shannon, "jsd_ws", true}};

/// One call of divergence k over rows z and ref (float or 16-bit maps of n x v), into the
/// float pool's value and gradient rows.
template <class Z>
void divergence_once(kind k, bool gradient, const Z& z, const Z& ref, Index v, Index n) {
  pool& p = data();
  RowsMap grad(p.grad.get(), n, v);
  auto value = p.value.head(n);
  const auto batch = klgrad::logit_rows(z, ref);
  klgrad::logits_options opt;
  if (k.workspace) {
    opt.workspace = p.work.data();
    opt.workspace_size = Index(p.work.size());
  }
  const auto s = gradient ? klgrad::logits_divergence(k.d, batch, value, grad, opt)
                          : klgrad::logits_divergence(k.d, batch, value, opt);
  benchmark::DoNotOptimize(s.loss);
  benchmark::ClobberMemory();
}

void kernel_once(kind k, bool gradient, Index v, Index n) {
  pool& p = data();
  divergence_once(k, gradient, RowsMap(p.z.get(), n, v), RowsMap(p.ref.get(), n, v), v, n);
}
void kernel(benchmark::State& state, kind k, bool gradient, Index v, Index n) {
  for (auto _ : state) kernel_once(k, gradient, v, n);
  account(state, v, n, 2);
}

/// The same rows rounded to 16 bits (bf16 or fp16), for the targets' shape only: 256 rows of
/// V = 151,936 (its own pool: 156 MB per format instead of the float pool's 1.9 GB).
constexpr Index rows16 = 256, vocabulary16 = 151936;
template <class S>
struct pool16 {
  std::unique_ptr<S[]> z, ref;
  pool16() : z(new S[std::size_t(rows16 * vocabulary16)]), ref(new S[std::size_t(rows16 * vocabulary16)]) {
    const pool& p = data();
    for (Index i = 0; i < rows16 * vocabulary16; ++i) {
      z[std::size_t(i)] = S(p.z[std::size_t(i)]);
      ref[std::size_t(i)] = S(p.ref[std::size_t(i)]);
    }
  }
};
template <class S>
pool16<S>& data16() {
  static pool16<S> p;
  return p;
}

/// (a) for 16-bit rows: a plain read of the same bytes (z16 and ref16 summed as floats, half
/// as many, so that the read runs at the float read's speed over the 16-bit bytes).
template <class S>
void read16_once(Index v, Index n) {
  pool16<S>& p = data16<S>();
  const Index words = n * v / 2;
  float s = Flat(reinterpret_cast<const float*>(p.z.get()), words).sum() +
            Flat(reinterpret_cast<const float*>(p.ref.get()), words).sum();
  benchmark::DoNotOptimize(s);
}

template <class S>
void kernel16_once(kind k, bool gradient, Index v, Index n) {
  pool16<S>& q = data16<S>();
  using Rows16 = Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map16 = Eigen::Map<const Rows16>;
  divergence_once(k, gradient, Map16(q.z.get(), n, v), Map16(q.ref.get(), n, v), v, n);
}

/// 16-bit rows in quadruples: (a) the read of their bytes, (b) the exp-and-sum (the same
/// number of float exponentials as for float rows), the 16-bit kernel and the float kernel
/// on float rows of the same shape, in rotating order; reports max(a, b) / kernel16 as
/// of_bound and float / kernel16 as x_float (the speed-up over float input).
template <class S>
void of_bound16(benchmark::State& state, kind k, bool gradient, Index v, Index n) {
  std::vector<double> ratios, speedups;
  for (auto _ : state) {
    double t[4];
    for (int turn = 0; turn < 4; ++turn) {
      const int which = int((std::size_t(turn) + ratios.size()) % 4);
      t[which] = paired::seconds([&] {
        if (which == 0) read16_once<S>(v, n);
        else if (which == 1) exp_once(v, n);
        else if (which == 2) kernel16_once<S>(k, gradient, v, n);
        else kernel_once(k, gradient, v, n);
      });
    }
    ratios.push_back(std::max(t[0], t[1]) / t[2]);
    speedups.push_back(t[3] / t[2]);
    state.SetIterationTime(t[2]);
  }
  paired::report(state, ratios, "of_bound");
  paired::report(state, speedups, "x_float");
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  state.counters["V"] = double(v);
  state.counters["rows"] = double(n);
}

/// The target's ratio measured in triples (paired.hpp): every iteration times (a), (b) and
/// the kernel back to back, in rotating order, and keeps max(a, b) / kernel; the iteration
/// time is the kernel's.
void of_bound(benchmark::State& state, kind k, bool gradient, Index v, Index n) {
  std::vector<double> ratios;
  for (auto _ : state) {
    double t[3];
    for (int turn = 0; turn < 3; ++turn) {
      const int which = int((std::size_t(turn) + ratios.size()) % 3);
      t[which] = paired::seconds([&] {
        if (which == 0) read_once(v, n);
        else if (which == 1) exp_once(v, n);
        else kernel_once(k, gradient, v, n);
      });
    }
    ratios.push_back(std::max(t[0], t[1]) / t[2]);
    state.SetIterationTime(t[2]);
  }
  paired::report(state, ratios, "of_bound");
  account(state, v, n, 2);
}

/// The naive composite a port from PyTorch writes: materialise log_softmax of both rows
/// (V-sized temporaries), then sum exp(lp) * (lp - lr). Reverse KL value only.
void naive_rkl(benchmark::State& state, Index v, Index n) {
  pool& p = data();
  Eigen::ArrayXf lp(v), lr(v);
  for (auto _ : state) {
    float total = 0;
    for (Index r = 0; r < n; ++r) {
      const Flat z(p.z.get() + r * v, v), ref(p.ref.get() + r * v, v);
      const float mz = z.maxCoeff(), mr = ref.maxCoeff();
      lp = z - (mz + std::log((z - mz).exp().sum()));
      lr = ref - (mr + std::log((ref - mr).exp().sum()));
      total += (lp.exp() * (lp - lr)).sum();
    }
    benchmark::DoNotOptimize(total);
  }
  account(state, v, n, 2);
}

std::string shape(Index v, Index n) {
  return "/V:" + std::to_string(v) + "/rows:" + std::to_string(n);
}

/// Built with OpenMP (KLGRAD_OPENMP=ON) the kernels split rows over threads, and Google
/// Benchmark's CPU time is that of the main thread alone: every benchmark is then timed by
/// wall-clock time (UseRealTime), and so is the ratio table.
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
constexpr bool wall_time = true;
#else
constexpr bool wall_time = false;
#endif

/// Remembers each benchmark's CPU time per iteration for the ratio table (single-threaded
/// programs on a shared machine: CPU time is the work, real time includes waiting), or its
/// wall time in an OpenMP build.
class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> seconds;
  void ReportRuns(const std::vector<Run>& runs) override {
    // Single runs, or the median when --benchmark_repetitions is given; all in one unit.
    for (const Run& r : runs)
      if ((r.run_type == Run::RT_Iteration && r.iterations > 0 && r.repetitions <= 1) ||
          (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median"))
        seconds[r.run_name.str()] = wall_time ? r.GetAdjustedRealTime() : r.GetAdjustedCPUTime();
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  auto add = [](const std::string& name, auto&&... args) {
    benchmark::internal::Benchmark* b = benchmark::RegisterBenchmark(name.c_str(), args...);
    if (wall_time) b->UseRealTime();
  };
  for (Index v : vocabularies)
    for (Index n : row_counts) {
      if (!fits(v, n)) continue;
      const std::string s = shape(v, n);
      add("read_sum" + s, read_sum, v, n);
      add("exp_sum" + s, exp_sum, v, n);
      for (const kind& k : kinds) {
        add(std::string(k.name) + "_value" + s, kernel, k, false, v, n);
        add(std::string(k.name) + "_value_grad" + s, kernel, k, true, v, n);
      }
      add("naive_rkl_value" + s, naive_rkl, v, n);
    }
  // The targets' shape (V = 151,936, single thread), measured in triples (of_bound above).
  if (!wall_time)
    for (const kind& k : kinds)
      for (bool gradient : {false, true})
        benchmark::RegisterBenchmark(
            (std::string(k.name) + (gradient ? "_value_grad" : "_value") + "_of_bound" +
             shape(151936, 256)).c_str(),
            of_bound, k, gradient, Index(151936), Index(256))
            ->Iterations(15)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
  // 16-bit rows at the targets' shape: bf16 and fp16, each against its bound and float.
  if (!wall_time)
    for (const char* format : {"bf16", "fp16"})
      for (const kind& k : kinds)
        for (bool gradient : {false, true})
          benchmark::RegisterBenchmark(
              (std::string(format) + "_" + k.name + (gradient ? "_value_grad" : "_value") +
               "_of_bound" + shape(vocabulary16, rows16)).c_str(),
              std::string(format) == "bf16" ? of_bound16<Eigen::bfloat16> : of_bound16<Eigen::half>,
              k, gradient, vocabulary16, rows16)
              ->Iterations(15)
              ->UseManualTime()
              ->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&argc, argv);
  data();  // fill the inputs now, not inside the first benchmark's timing
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  // Ratios: the slower of (a) and (b) over the kernel's time, for the same input bytes.
  std::printf("\nRatio to the slower of (a) read-sum and (b) exp-sum over the same input "
              "elements, by %s (1.0 = as fast as that bound)\n",
              wall_time ? "wall time (OpenMP build)" : "CPU time");
  std::printf("%-8s %-6s %-10s %-10s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "V", "rows",
              "read GB/s", "exp Gel/s", "rkl", "rkl+grad", "fkl", "fkl+grad", "jsd", "jsd+grad",
              "jsd ws", "jsd ws+g", "naive rkl");
  for (Index v : vocabularies)
    for (Index n : row_counts) {
      const std::string s = shape(v, n);
      const auto& t = reporter.seconds;
      if (!t.count("read_sum" + s) || !t.count("exp_sum" + s)) continue;
      const double ta = t.at("read_sum" + s), tb = t.at("exp_sum" + s);  // ns per iteration
      const double bound = std::max(ta, tb);
      const double elements = 2.0 * double(n) * double(v);
      auto ratio = [&](const std::string& name) {
        return t.count(name + s) ? bound / t.at(name + s) : 0.0;
      };
      std::printf(
          "%-8ld %-6ld %-10.2f %-10.2f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n",
          long(v), long(n), elements * 4 / ta, elements / tb,  // times in ns
          ratio("rkl_value"), ratio("rkl_value_grad"), ratio("fkl_value"),
          ratio("fkl_value_grad"), ratio("jsd_value"), ratio("jsd_value_grad"),
          ratio("jsd_ws_value"), ratio("jsd_ws_value_grad"), ratio("naive_rkl_value"));
    }
  benchmark::Shutdown();
  return 0;
}
