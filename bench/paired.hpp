// Ratios of two timings taken back to back. This VM's memory bandwidth and exp rate drift
// by 30-40% within minutes, so a ratio of two benchmarks timed apart is good to about
// +-0.1; timing the kernel and its bound within one iteration, many times, and reporting
// the median of the per-iteration ratios makes the drifts hit both sides alike.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace paired {

/// Wall-clock seconds that f() takes.
template <class F>
double seconds(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Reports the median of `ratios` as the counter `name` and its quartiles as name_q1 and
/// name_q3.
inline void report(benchmark::State& state, std::vector<double> ratios, const std::string& name) {
  if (ratios.empty()) return;
  std::sort(ratios.begin(), ratios.end());
  auto quantile = [&](double q) {
    return ratios[std::size_t(q * double(ratios.size() - 1) + 0.5)];
  };
  state.counters[name] = quantile(0.5);
  state.counters[name + "_q1"] = quantile(0.25);
  state.counters[name + "_q3"] = quantile(0.75);
}

}  // namespace paired
