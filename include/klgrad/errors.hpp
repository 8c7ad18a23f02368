// Exceptions the library raises, and how it raises them when exceptions are disabled.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace klgrad {

/// Base of every klgrad exception.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Arrays whose shapes do not fit together; the message carries both shapes.
struct shape_error : error {
  using error::error;
};

/// Why an input_error was raised, for front ends that phrase it in their own words.
enum class input_reason {
  other,             ///< any other domain error; only what() describes it
  nonfinite,         ///< NaN or +-inf where a finite number is needed (a valid token or row)
  empty_row,         ///< a logits row with no finite entry (every logit -inf)
  zero_reference,    ///< the reference gives probability 0 where pi is positive (RKL = inf)
  missing_behavior,  ///< the spec weights by pi/mu but the batch has no behaviour log-probs
  bad_count,         ///< a global count (batch_counts) that cannot be used
  too_large,         ///< the work would need more memory than the caller's limit
};

/// A value outside its domain (a non-finite log-probability, a negative count, ...).
/// what() names the C++ argument, the index and the value; the fields carry the same facts
/// for front ends (the CLI, Python) that name their own arguments. A field that does not
/// apply holds -1 (indices) or NaN (numbers).
struct input_error : error {
  input_reason reason = input_reason::other;
  std::string argument;          ///< the C++ argument: "logp", "ref", "behavior", "z", ...
  std::ptrdiff_t sequence = -1;  ///< sequence (row b of a padded batch)
  std::ptrdiff_t position = -1;  ///< position t within the sequence
  std::ptrdiff_t flat = -1;      ///< flat token (or logits row) index over the whole batch
  std::ptrdiff_t column = -1;    ///< vocabulary entry of a logits row
  double value = std::nan("");   ///< the offending value (a count, a byte size, ...)
  double limit = std::nan("");   ///< the bound it broke (too_large: the byte limit)

  using error::error;
  input_error(const std::string& message, input_reason why, std::string arg)
      : error(message), reason(why), argument(std::move(arg)) {}
};

/// A runtime spec string that does not parse; the message names the wrong word and
/// lists what is allowed.
struct spec_error : error {
  using error::error;
};

namespace detail {

/// Raises e; with exceptions disabled prints its message and aborts.
template <class E>
[[noreturn]] inline void raise(const E& e) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
  throw e;
#else
  std::fprintf(stderr, "klgrad: %s\n", e.what());
  std::abort();
#endif
}

/// Raises E with the message.
template <class E>
[[noreturn]] inline void raise(const std::string& message) {
  raise(E(message));
}

/// Concatenates its arguments with operator<< (numbers at full precision).
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  out.precision(17);
  (out << ... << args);
  return out.str();
}

/// Shortest decimal text that reads back as exactly v.
inline std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  if (v == std::floor(v) && std::abs(v) < 1e15) {  // integers without an exponent
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace detail
}  // namespace klgrad
