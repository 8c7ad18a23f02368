// Exceptions the library raises, and how it raises them when exceptions are disabled.
#pragma once

#include "number_text.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <locale>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace klgrad {

using Eigen::Index;

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

/// Appends one argument of cat: floating-point numbers as their shortest text (the text
/// read_number reads back), anything else by operator<<.
template <class T>
void append(std::ostringstream& out, const T& x) {
  if constexpr (std::is_same_v<T, float>) out << shortest_text(x);
  else if constexpr (std::is_floating_point_v<T>) out << shortest_text(double(x));
  else out << x;
}

/// Concatenates its arguments. The stream reads the classic locale, whatever
/// std::locale::global says, so that 12345 never prints as "12.345".
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  out.imbue(std::locale::classic());
  (append(out, args), ...);
  return out.str();
}

/// User text for a message: all of it up to 80 characters, else its first 80 (not cutting
/// a UTF-8 character) and "... (N characters)", so that a huge input gives a short message.
inline std::string clip(std::string_view text) {
  constexpr std::size_t shown = 80;
  if (text.size() <= shown) return std::string(text);
  std::size_t end = shown;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0u) == 0x80u) --end;
  return cat(text.substr(0, end), "... (", text.size(), " characters)");
}

/// The first entry of a row that is NaN or +inf, or -1.
template <class T>
Index first_invalid(const T* x, Index V) {
  for (Index j = 0; j < V; ++j)
    if (std::isnan(x[j]) || x[j] == std::numeric_limits<T>::infinity()) return j;
  return -1;
}

/// Where row `row` of a logits array sits in a padded B x T batch, for messages.
inline std::string row_place(Index row, Index positions) {
  if (positions <= 0) return cat("row ", row);
  return cat("row ", row, " (sequence ", row / positions, ", position ", row % positions, ")");
}

/// Fills the place fields of e for row `row` (see row_place).
inline void locate_row(input_error& e, Index row, Index positions) {
  e.flat = row;
  e.sequence = positions > 0 ? row / positions : -1;
  e.position = positions > 0 ? row % positions : -1;
}

/// Raises input_error for a row whose log-sum-exp is not finite: the first NaN / +inf
/// entry, or "no finite entry" when every entry is -inf.
template <class T>
[[noreturn]] void report_bad_row(const T* x, Index V, const char* name, Index row,
                                 Index positions) {
  const Index j = first_invalid(x, V);
  input_error e =
      j >= 0 ? input_error(cat(name, " ", row_place(row, positions), ", column ", j, " is ",
                               x[j], "; logits must be finite or -inf"),
                           input_reason::nonfinite, name)
             : input_error(cat(name, " ", row_place(row, positions),
                               " has no finite entry (every logit is -inf), so its softmax is "
                               "undefined; mask the row out"),
                           input_reason::empty_row, name);
  locate_row(e, row, positions);
  e.column = j;
  if (j >= 0) e.value = double(x[j]);
  raise(e);
}

/// Checks a temperature: finite and positive.
inline void check_temperature(double tau) {
  if (!(tau > 0.0) || !std::isfinite(tau))
    raise(input_error(cat("temperature must be finite and > 0, got ", tau),
                      std::isfinite(tau) ? input_reason::other : input_reason::nonfinite,
                      "temperature"));
}

}  // namespace detail
}  // namespace klgrad
