// Exceptions the library raises, and how it raises them when exceptions are disabled.
#pragma once

#include "number_text.hpp"

#include <cstdio>
#include <cstdlib>
#include <locale>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

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

}  // namespace detail
}  // namespace klgrad
