// One table of names per enum: each value beside the word the spec grammar, to_string, the
// error messages and the bindings use for it, so that a value is named in one place.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

namespace klgrad {

/// One row of an enum's names table.
template <class Enum>
struct enum_name {
  Enum value;
  std::string_view name;
};

namespace detail {

/// The name of e in its table ("?" for a value the table lacks).
template <class Enum, std::size_t N>
constexpr std::string_view name_in(const enum_name<Enum> (&table)[N], Enum e) {
  for (const enum_name<Enum>& row : table)
    if (row.value == e) return row.name;
  return "?";
}

/// The value named `name` in the table, or nothing.
template <class Enum, std::size_t N>
constexpr std::optional<Enum> value_in(const enum_name<Enum> (&table)[N], std::string_view name) {
  for (const enum_name<Enum>& row : table)
    if (row.name == name) return row.value;
  return std::nullopt;
}

/// The table's values from row From on, in its order (the all_* lists).
template <std::size_t From = 0, class Enum, std::size_t N>
constexpr std::array<Enum, N - From> values_in(const enum_name<Enum> (&table)[N]) {
  std::array<Enum, N - From> out{};
  for (std::size_t i = From; i < N; ++i) out[i - From] = table[i].value;
  return out;
}

}  // namespace detail

}  // namespace klgrad
