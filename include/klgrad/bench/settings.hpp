// What a throughput measurement is asked for and what it reports: the number format, the
// batch's shape, the settings (time budget, threads, allocation counter, progress) and the
// result row (rates and floor ratios as quartiles over the rounds).
#pragma once

#include "../support/errors.hpp"
#include "../support/names.hpp"

#include <Eigen/Core>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace klgrad::bench {

using Index = Eigen::Index;

/// The element type of the batch: log-probabilities (sampled tokens: float or double) or
/// logits (also bf16 and fp16, computed in float).
enum class number_format { float32, float64, bfloat16, float16 };

/// Each format's name: the one table the CLI's --dtype, the bindings and the result read.
inline constexpr enum_name<number_format> number_format_names[] = {
    {number_format::float32, "float"},
    {number_format::float64, "double"},
    {number_format::bfloat16, "bf16"},
    {number_format::float16, "fp16"}};

inline constexpr std::string_view to_string(number_format x) {
  return detail::name_in(number_format_names, x);
}

/// The batch a measurement runs on: padded (sequences x positions, with a mask of 90% valid
/// tokens) or packed (`tokens` > 0: sequences of `lengths`, cycled, the last one cut to fit,
/// no mask); `vocabulary` logits per row for a full-vocabulary kernel (a row per token).
struct batch_shape {
  Index sequences = 0;        ///< B of a padded batch
  Index positions = 0;        ///< T of a padded batch
  Index tokens = 0;           ///< N of a packed batch (0: padded)
  std::vector<Index> lengths;  ///< packed sequence lengths, cycled (empty: one sequence of N)
  Index vocabulary = 0;       ///< V, full-vocabulary kernels only

  bool packed() const { return tokens > 0; }
  /// Tokens (rows) per call.
  Index size() const { return packed() ? tokens : sequences * positions; }
};

/// How to measure.
struct settings {
  /// Wall-clock budget of one measurement (kernel and floor, warm-up included), > 0. At
  /// least min_rounds rounds run whatever it says.
  double seconds = 1.0;
  int min_rounds = 5;
  /// Threads sharing each call: the batch is split into this many slices (of whole sequences
  /// for sampled tokens, of rows for logits; at most one per sequence or row), each run by
  /// its own thread with the whole batch's counts (as data-parallel shards are), and the
  /// floor is split alike.
  int threads = 1;
  /// Heap allocations so far in this program (a counter that a program's replaced
  /// allocation functions keep): read around every kernel call. Empty: not counted.
  std::function<long long()> allocations;
  /// Told the fraction of the budget spent after each round (a progress line).
  std::function<void(double)> progress;
};

/// The 25th, 50th and 75th percentiles of a sample.
struct quartiles {
  double q1 = 0, median = 0, q3 = 0;
};

/// One measured kernel beside its floor.
struct result {
  std::string name;           ///< the spec, or the divergence
  number_format format = number_format::float32;
  std::string floor;          ///< what the floor is: "triad" or "exp-sum"
  Index items = 0;            ///< tokens (or logit rows) per call
  double bytes_per_item = 0;  ///< bytes the kernel reads and writes per token (row)
  double floor_bytes_per_item = 0;  ///< bytes the floor moves per token (row)
  int threads = 1;
  Index rounds = 0;           ///< kernel + floor pairs timed
  quartiles items_per_second;        ///< the kernel's tokens (rows) per second
  quartiles floor_items_per_second;  ///< the floor's, over the same tokens (rows)
  /// Per round: floor time / kernel time, measured back to back (1 = as fast as the floor).
  quartiles of_floor;
  /// Heap allocations per kernel call, NaN when the program counts none.
  double allocations_per_call = std::numeric_limits<double>::quiet_NaN();
  /// The vector instructions the kernel ran on, and the widest this CPU offers
  /// (bench/instruction_set.hpp): "sse2" beside "avx512" says a native build would be wider.
  std::string_view vector_isa, cpu_vector_isa;
};

namespace detail {

/// Refuses settings a measurement cannot run with, naming the setting.
inline void check_settings(const settings& s) {
  if (!(s.seconds > 0) || !std::isfinite(s.seconds))
    klgrad::detail::raise<input_error>(klgrad::detail::cat(
        "the time budget must be a finite number of seconds > 0, got ", s.seconds));
  if (s.threads < 1)
    klgrad::detail::raise<input_error>(
        klgrad::detail::cat("threads must be >= 1, got ", s.threads));
  if (s.min_rounds < 1)
    klgrad::detail::raise<input_error>(
        klgrad::detail::cat("min_rounds must be >= 1, got ", s.min_rounds));
}

/// Refuses a shape with nothing to measure, naming the dimension.
inline void check_shape(const batch_shape& b, bool logits) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) klgrad::detail::raise<shape_error>(what);
  };
  if (b.packed()) {
    for (Index length : b.lengths)
      need(length > 0, klgrad::detail::cat("sequence lengths must be > 0, got ", length));
  } else {
    need(b.sequences > 0 && b.positions > 0,
         klgrad::detail::cat("the batch must have B > 0 sequences of T > 0 positions, got ",
                             b.sequences, " x ", b.positions));
  }
  if (logits)
    need(b.vocabulary > 0,
         klgrad::detail::cat("full-vocabulary kernels need a vocabulary V > 0, got ",
                             b.vocabulary));
}

}  // namespace detail

}  // namespace klgrad::bench
