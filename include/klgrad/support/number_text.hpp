// Numbers as text: the one decimal grammar klgrad reads and the shortest text it writes, both
// independent of the C and C++ locales (a trainer may call setlocale or std::locale::global).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace klgrad::detail {

/// Shortest text that reads back as exactly v (std::to_chars: "0.04" in every locale);
/// integers below 1e15 without an exponent ("100000", not "1e+05"); "inf", "-inf", "nan".
template <class T>
std::string shortest_text(T v) {
  static_assert(std::is_floating_point_v<T>, "shortest_text formats float or double");
  char buf[64];
  const bool integer = std::isfinite(v) && v == std::floor(v) && std::abs(v) < T(1e15);
  const std::to_chars_result r = integer ? std::to_chars(buf, buf + sizeof buf, v,
                                                         std::chars_format::fixed)
                                         : std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// Shortest decimal text that reads back as exactly v (see shortest_text).
inline std::string format_number(double v) { return shortest_text(v); }

/// Why read_number refused a text (none: it did not).
enum class number_problem {
  none,
  syntax,     // not NUMBER (nor inf where allowed): spaces, hex, nan, "1e", "--1", ...
  infinite,   // inf, +inf or -inf where the number must be finite
  too_large,  // beyond the largest finite double
  too_small   // nonzero but below the smallest normal double (subnormal, or rounds to 0)
};

struct number_reading {
  double value = 0.0;
  number_problem problem = number_problem::none;
};

/// Reads the one number grammar,
///   NUMBER = [+|-] (DIGITS [. [DIGITS]] | . DIGITS) [(e|E) [+|-] DIGITS]
/// decimal digits only, nothing before or after; with infinity_allowed also exactly "inf",
/// "+inf" or "-inf". Subnormals are refused (too_small): they carry fewer than 53
/// significant bits, their reciprocals overflow, and no constant of a KL term needs one.
inline number_reading read_number(std::string_view text, bool infinity_allowed) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (text == "inf" || text == "+inf" || text == "-inf") {
    if (!infinity_allowed) return {0.0, number_problem::infinite};
    return {text[0] == '-' ? -inf : inf, number_problem::none};
  }
  // The grammar is checked here, since std::from_chars also takes "nan", "inf", "infinity"
  // and reads "1e" as 1, and does not take a leading '+'. Along the way: the decimal
  // exponent of the leading digit, which tells an overflow from an underflow.
  const std::size_t n = text.size();
  auto digit = [&](std::size_t k) { return k < n && text[k] >= '0' && text[k] <= '9'; };
  std::size_t i = n > 0 && (text[0] == '+' || text[0] == '-') ? 1 : 0;
  std::size_t digits = 0;
  long lead = -1;
  bool nonzero = false;
  for (; digit(i); ++i, ++digits)
    if (nonzero || text[i] != '0') {
      nonzero = true;
      ++lead;
    }
  if (i < n && text[i] == '.')
    for (++i; digit(i); ++i, ++digits)
      if (!nonzero) {
        nonzero = text[i] != '0';
        if (!nonzero) --lead;
      }
  if (digits == 0) return {0.0, number_problem::syntax};
  long exponent = 0;
  if (i < n && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    const bool negative = i < n && text[i] == '-';
    if (i < n && (text[i] == '+' || text[i] == '-')) ++i;
    if (!digit(i)) return {0.0, number_problem::syntax};
    for (; digit(i); ++i) exponent = std::min(10 * exponent + (text[i] - '0'), 100000L);
    if (negative) exponent = -exponent;
  }
  if (i != n) return {0.0, number_problem::syntax};
  const char* first = text.data() + (text[0] == '+' ? 1 : 0);
  double v = 0.0;
  const std::from_chars_result r = std::from_chars(first, text.data() + n, v);
  if (r.ec == std::errc::result_out_of_range)
    return {0.0, lead + exponent >= 0 ? number_problem::too_large : number_problem::too_small};
  if (r.ec != std::errc() || r.ptr != text.data() + n) return {0.0, number_problem::syntax};
  if (v != 0.0 && std::abs(v) < std::numeric_limits<double>::min())
    return {0.0, number_problem::too_small};
  return {v, number_problem::none};
}

}  // namespace klgrad::detail
