// The interleaved measurement: a kernel and its floor timed back to back, many times, in
// alternating order, so that the machine's drift (bandwidth, clock, neighbours) hits both
// alike and the ratio of the two times in one round is steadier than either time.
#pragma once

#include "instruction_set.hpp"
#include "settings.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

namespace klgrad::bench::detail {

/// Wall-clock seconds that f() takes.
template <class F>
double seconds_of(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Quartiles of xs (nearest rank; xs is sorted in place), zeros when empty.
inline quartiles quartiles_of(std::vector<double> xs) {
  if (xs.empty()) return {};
  std::sort(xs.begin(), xs.end());
  auto at = [&](double q) { return xs[std::size_t(q * double(xs.size() - 1) + 0.5)]; };
  return {at(0.25), at(0.5), at(0.75)};
}

/// The times of each round, and the heap allocations the kernel's calls made.
struct paired_times {
  std::vector<double> kernel, floor;
  long long allocations = 0;
  bool counted = false;
};

/// Times kernel() and floor() once each per round, the order alternating between rounds,
/// after one untimed call of each, until the budget is spent and min_rounds have run.
/// Heap allocations are read around each kernel call only (outside its timing).
template <class Kernel, class Floor>
paired_times interleave(Kernel&& kernel, Floor&& floor, const settings& s) {
  paired_times t;
  t.counted = bool(s.allocations);
  const auto start = std::chrono::steady_clock::now();
  auto spent = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  kernel();
  floor();
  const std::size_t expected = std::size_t(std::max(1.0, s.seconds / std::max(spent(), 1e-9)));
  t.kernel.reserve(std::min<std::size_t>(expected + 16, 1u << 20));
  t.floor.reserve(t.kernel.capacity());
  auto timed_kernel = [&] {
    const long long before = t.counted ? s.allocations() : 0;
    const double k = seconds_of(kernel);
    if (t.counted) t.allocations += s.allocations() - before;
    return k;
  };
  while (spent() < s.seconds || t.kernel.size() < std::size_t(s.min_rounds)) {
    const bool floor_first = t.kernel.size() % 2 == 0;
    const double before = floor_first ? seconds_of(floor) : 0.0;
    const double k = timed_kernel();
    const double after = floor_first ? 0.0 : seconds_of(floor);
    t.kernel.push_back(k);
    t.floor.push_back(before + after);
    if (s.progress) s.progress(std::min(1.0, spent() / s.seconds));
  }
  return t;
}

/// The result row of a measurement: rates per round over `items`, ratios per round.
inline result summarise(const paired_times& t, Index items) {
  std::vector<double> rate, floor_rate, ratio;
  for (std::size_t i = 0; i < t.kernel.size(); ++i) {
    rate.push_back(double(items) / t.kernel[i]);
    floor_rate.push_back(double(items) / t.floor[i]);
    ratio.push_back(t.floor[i] / t.kernel[i]);
  }
  result r;
  r.items = items;
  r.rounds = Index(t.kernel.size());
  r.items_per_second = quartiles_of(rate);
  r.floor_items_per_second = quartiles_of(floor_rate);
  r.of_floor = quartiles_of(ratio);
  if (t.counted) r.allocations_per_call = double(t.allocations) / double(t.kernel.size());
  r.vector_isa = compiled_vector_isa();
  r.cpu_vector_isa = cpu_vector_isa();
  return r;
}

}  // namespace klgrad::bench::detail
