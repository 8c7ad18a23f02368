// Exceptions the library raises, and how it raises them when exceptions are disabled.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace klgrad {

/// Base of every klgrad exception.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Arrays whose shapes do not fit together; the message carries both shapes.
struct shape_error : error {
  using error::error;
};

/// A value outside its domain (a non-finite log-probability, a negative count, ...);
/// the message names the argument, the index and the value.
struct input_error : error {
  using error::error;
};

/// A runtime spec string that does not parse; the message names the wrong word and
/// lists what is allowed.
struct spec_error : error {
  using error::error;
};

namespace detail {

/// Raises E with the message; with exceptions disabled prints it and aborts.
template <class E>
[[noreturn]] inline void raise(const std::string& message) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
  throw E(message);
#else
  std::fprintf(stderr, "klgrad: %s\n", message.c_str());
  std::abort();
#endif
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
