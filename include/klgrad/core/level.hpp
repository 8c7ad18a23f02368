// The level of a coefficient: the token alone, the reward-to-go of the tokens after it, or
// the whole sequence (the enum and its names; the discounted sum is kernel/sum_to_go.hpp).
#pragma once

#include "../support/names.hpp"

#include <string_view>

namespace klgrad {

/// token:    c_t from token t alone (the per-state, "part 1" gradient);
/// to_go:    in-reward penalties summed as a reward-to-go, R_t = sum_{t'>=t} gamma^(t'-t) k_t';
/// sequence: in-reward penalties summed over the sequence and broadcast to every token;
///           an as-loss term is applied to the sequence log-ratio S = sum_t s_t.
/// gamma discounts by valid (unmasked) tokens.
enum class level { token, to_go, sequence };

/// Each level's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<level> level_names[] = {
    {level::token, "token"},
    {level::to_go, "to-go"},
    {level::sequence, "sequence"}};

inline constexpr auto all_levels = detail::values_in(level_names);

inline constexpr std::string_view to_string(level x) {
  return detail::name_in(level_names, x);
}

}  // namespace klgrad
