// Where a KL term enters the update (in the reward, as a loss, or both) and which
// estimators give its value and its gradient.
#pragma once

#include "../support/names.hpp"
#include "estimators.hpp"

#include <string_view>
#include <type_traits>

namespace klgrad {

/// in_reward: sg(k) * lp, coefficient k.  as_loss: k, coefficient k'.
/// both: sg(k) * lp + k, coefficient k + k'.
enum class placement { in_reward, as_loss, both };

/// Each placement's name: the one table to_string, the spec's parser and the bindings read.
inline constexpr enum_name<placement> placement_names[] = {
    {placement::in_reward, "in-reward"},
    {placement::as_loss, "as-loss"},
    {placement::both, "both"}};

inline constexpr auto all_placements = detail::values_in(placement_names);

inline constexpr std::string_view to_string(placement x) {
  return detail::name_in(placement_names, x);
}

inline constexpr bool has_reward_part(placement p) { return p != placement::as_loss; }
inline constexpr bool has_loss_part(placement p) { return p != placement::in_reward; }

/// A run-time placement as a compile-time one: f(std::integral_constant<placement, Where>{}).
/// The one place where a spec's placement becomes a term type's.
template <class F>
decltype(auto) visit(placement where, F&& f) {
  switch (where) {
    case placement::in_reward: return f(std::integral_constant<placement, placement::in_reward>{});
    case placement::as_loss: return f(std::integral_constant<placement, placement::as_loss>{});
    case placement::both: break;
  }
  return f(std::integral_constant<placement, placement::both>{});
}

/// What a placement back-propagates from a term's two parts, the in-reward part r (the
/// detached penalty) and the as-loss part l: in_reward r, as_loss l, both r + l. The parts
/// are scalars, Eigen arrays or expressions (a part left out is not multiplied by 0: 0 * inf
/// is NaN), or the kernel's packet functors (kernel/coefficient.hpp).
template <placement Where, class R, class L>
decltype(auto) placed_sum(const R& reward_part, const L& loss_part) {
  if constexpr (Where == placement::in_reward)
    return (reward_part);
  else if constexpr (Where == placement::as_loss)
    return (loss_part);
  else
    return reward_part + loss_part;
}

/// A KL term as a type: the placement and its estimators, with the term's two paths.
///   value(s):       the logged value k_v(s) (and the in-reward penalty);
///   coefficient(s): the coefficient on grad log pi that the placement back-propagates,
///                   in_reward: k_v(s) (a detached penalty times the score function),
///                   as_loss:   k_g'(s) (autograd of the loss k),
///                   both:      k_v(s) + k_g'(s).
/// s is a scalar (float, double) or an Eigen array (the result is then an expression).
/// Ev != Eg is a straight-through term: the value of Ev with the gradient of Eg (verl's
/// "k3+" is as_loss<k3, k2>). Weights, levels and aggregation act on top of this
/// coefficient: evaluate() and a spec string describe those. The batch kernel reads its
/// per-token coefficient from coefficient_of() (kernel/passes.hpp, fused_pass), and
/// evaluate<Term>() runs the kernel for a term type.
template <placement Where, class Ev, class Eg = Ev>
struct kl_term {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  static_assert(Where != placement::in_reward || std::is_same_v<Ev, Eg>,
                "klgrad: an in-reward term back-propagates its value; it has no gradient "
                "estimator of its own");
  using value_estimator = Ev;
  using gradient_estimator = Eg;
  static constexpr placement where = Where;

  template <class S>
  static auto value(const S& s) {
    return Ev::value(s);
  }
  template <class S>
  static auto coefficient(const S& s) {
    return coefficient_of(Ev::value(s), Eg::derivative(s));
  }
  /// The coefficient from the term's estimates at s, value = k_v(s) and derivative =
  /// k_g'(s), already computed (scalars, arrays, or the kernel's packet functors).
  template <class V, class D>
  static decltype(auto) coefficient_of(const V& value, const D& derivative) {
    return placed_sum<Where>(value, derivative);
  }
};

template <class T>
struct is_kl_term : std::false_type {};
template <placement Where, class Ev, class Eg>
struct is_kl_term<kl_term<Where, Ev, Eg>> : std::true_type {};
/// Whether T is a kl_term (in_reward<E>, as_loss<Ev, Eg>, both<Ev, Eg>).
template <class T>
inline constexpr bool is_kl_term_v = is_kl_term<T>::value;

/// k in the reward: r_t -= beta k(s_t) with k detached (PPO, verl's use_kl_in_reward).
template <class E>
using in_reward = kl_term<placement::in_reward, E>;
/// k as a loss that gradients flow through (GRPO, verl's use_kl_loss); as_loss<Ev, Eg> is
/// straight-through.
template <class Ev, class Eg = Ev>
using as_loss = kl_term<placement::as_loss, Ev, Eg>;
/// Both at once: the penalty in the reward and the loss.
template <class Ev, class Eg = Ev>
using both = kl_term<placement::both, Ev, Eg>;

/// The term type of a placement and an estimator pair as a spec names them
/// ("a~b-PLACEMENT"). An in-reward term back-propagates its value and reads no gradient
/// estimator, so "a~b-in-reward" is in_reward<a> (b still widens the kernel's guard, as
/// the spec's plan says).
template <placement Where, class Ev, class Eg>
using term_of = kl_term<Where, Ev, std::conditional_t<Where == placement::in_reward, Ev, Eg>>;

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
