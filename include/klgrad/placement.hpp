// Where a KL term enters the update (in the reward, as a loss, or both) and which
// estimators give its value and its gradient.
#pragma once

#include "estimators.hpp"

#include <string_view>

namespace klgrad {

/// in_reward: sg(k) * lp, coefficient k.  as_loss: k, coefficient k'.
/// both: sg(k) * lp + k, coefficient k + k'.
enum class placement { in_reward, as_loss, both };

inline constexpr placement all_placements[] = {placement::in_reward, placement::as_loss,
                                               placement::both};

inline constexpr std::string_view to_string(placement p) {
  switch (p) {
    case placement::in_reward: return "in-reward";
    case placement::as_loss: return "as-loss";
    case placement::both: return "both";
  }
  return "?";
}

inline constexpr bool has_reward_part(placement p) { return p != placement::as_loss; }
inline constexpr bool has_loss_part(placement p) { return p != placement::in_reward; }

/// A KL term: the estimator whose value is reported (and used as the in-reward penalty),
/// the estimator whose derivative is back-propagated by the as-loss part, and the
/// placement. value_estimator != gradient_estimator is a straight-through term
/// ("k3~k2": value k3, gradient k2, as verl's "k3+").
struct term {
  estimator value_estimator = estimator::k1;
  estimator gradient_estimator = estimator::k1;
  placement where = placement::in_reward;

  bool straight_through() const { return value_estimator != gradient_estimator; }
  friend bool operator==(const term& a, const term& b) {
    return a.value_estimator == b.value_estimator &&
           a.gradient_estimator == b.gradient_estimator && a.where == b.where;
  }
};

}  // namespace klgrad
