// Per-token KL reward shaping, discounted returns and GAE advantages over padded (B x T with
// a mask) and packed (offsets) token layouts (views/batch.hpp), for trainers that put the KL into
// the reward.
#pragma once

#include "kernel/sum_to_go.hpp"
#include "support/errors.hpp"
#include "views/batch.hpp"

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <type_traits>

namespace klgrad {

namespace detail {

template <class T>
void require_finite_token(const char* name, Index b, Index t, T v) {
  if (!std::isfinite(v))
    raise(input_error(cat(name, " at sequence ", b, ", position ", t, " is ", v,
                          ", not finite, in a valid token"),
                      input_reason::nonfinite, name));
}

inline void require_unit_interval(const char* name, double v) {
  if (!(v >= 0.0 && v <= 1.0)) raise<input_error>(cat(name, " = ", v, " must lie in [0, 1]"));
}

}  // namespace detail

/// KL reward shaping, as PPO trainers do with "KL in reward": for every valid token
///   r_t = -beta * kl_t  (+ task_reward[b] on the last valid token of sequence b),
/// and r = 0 on masked tokens (whatever kl holds there, NaN included). kl is the per-token
/// KL estimate, e.g. the `value` output of klgrad::evaluate for an in-reward spec at
/// level=token (beta=1; its value is k(s_t), times the weight when there is one).
/// task_reward has one entry per sequence (ignored for a sequence without valid tokens);
/// kl and rewards have the layout's shape; rewards may be the same array as kl.
template <class Layout, class R, class K, class Out>
void shape_rewards(const Layout& layout, const Eigen::DenseBase<R>& task_reward,
                   const Eigen::DenseBase<K>& kl, double beta, const Eigen::DenseBase<Out>& rewards) {
  using T = std::remove_const_t<typename Out::Scalar>;
  static_assert(std::is_floating_point_v<T>, "klgrad: rewards must be float or double");
  static_assert(std::is_same_v<std::remove_const_t<typename K::Scalar>, T>,
                "klgrad: kl and rewards differ in type");
  using M = typename Layout::mask_scalar;
  if (task_reward.size() != layout.sequences() ||
      (task_reward.rows() != 1 && task_reward.cols() != 1))
    detail::raise<shape_error>(detail::cat(
        "shape mismatch: task_reward is ", detail::shape_text(task_reward.rows(), task_reward.cols()),
        " but the batch (", layout.shape(), ") has ", layout.sequences(), " sequences"));
  if (!std::isfinite(beta) || beta < 0)
    detail::raise<input_error>(detail::cat("beta = ", beta, " must be finite and >= 0"));
  const auto k = layout.view(kl, "kl");
  const auto r = detail::output_of(layout, rewards, "rewards");
  const T b_ = T(beta);
  for (Index b = 0; b < layout.sequences(); ++b) {
    const M* mask = layout.mask_of(b);
    const T* kb = layout.row(k, b);
    T* rb = layout.row(r, b);
    bool last = true;  // walking backwards, the first valid token is the last one
    for (Index t = layout.size_of(b) - 1; t >= 0; --t) {
      if (!detail::valid_at(mask, t)) {
        rb[t] = T(0);
        continue;
      }
      const T kt = kb[t];
      detail::require_finite_token("kl", b, t, kt);
      T out = -b_ * kt;
      if (last) {
        const T task = T(task_reward.derived().coeff(b));
        if (!std::isfinite(task))
          detail::raise(input_error(detail::cat("task_reward[", b, "] is ", task, ", not finite"),
                                    input_reason::nonfinite, "task_reward"));
        out += task;
        last = false;
      }
      rb[t] = out;
    }
  }
}

/// Discounted returns G_t = r_t + gamma * G_{t'} with t' the next valid token of the same
/// sequence (G = 0 after the last valid token). Masked tokens are skipped: gamma discounts
/// by valid tokens with the sum of level=to-go (kernel/sum_to_go.hpp), saturated to stay finite, and
/// masked tokens get 0. returns may be the same array as rewards.
template <class Layout, class R, class Out>
void discounted_returns(const Layout& layout, const Eigen::DenseBase<R>& rewards, double gamma,
                        const Eigen::DenseBase<Out>& returns) {
  using T = std::remove_const_t<typename Out::Scalar>;
  static_assert(std::is_floating_point_v<T>, "klgrad: returns must be float or double");
  static_assert(std::is_same_v<std::remove_const_t<typename R::Scalar>, T>,
                "klgrad: rewards and returns differ in type");
  using M = typename Layout::mask_scalar;
  detail::require_unit_interval("gamma", gamma);
  const auto r = layout.view(rewards, "rewards");
  const auto g = detail::output_of(layout, returns, "returns");
  for (Index b = 0; b < layout.sequences(); ++b) {
    const M* mask = layout.mask_of(b);
    const T* rb = layout.row(r, b);
    T* gb = layout.row(g, b);
    const Index n = layout.size_of(b);
    for (Index t = 0; t < n; ++t) {
      const bool valid = detail::valid_at(mask, t);
      if (valid) detail::require_finite_token("rewards", b, t, rb[t]);
      gb[t] = valid ? rb[t] : T(0);
    }
    detail::sum_to_go(mask, n, gb, T(gamma));
  }
}

/// Generalised advantage estimation (Schulman et al. 2016) with critic values V:
///   delta_t = r_t + gamma * V_{t'} - V_t,   A_t = delta_t + gamma * lambda * A_{t'},
///   returns_t = A_t + V_t,
/// with t' the next valid token of the same sequence, and V_{t'} = A_{t'} = 0 after the last
/// valid token (no bootstrap past the end of a response). Masked tokens are skipped (gamma
/// and lambda discount by valid tokens, as level=to-go does) and get A = returns = 0.
/// lambda = 1 gives A_t = G_t - V_t; lambda = 0 gives the one-step delta_t. With gamma = 1
/// and an exact critic V(h_t) = E[G_t | h_t], E[sum_t A_t grad log pi] is the exact
/// gradient of E[sum_t r_t] for every lambda. Outputs may be the same arrays as inputs.
template <class Layout, class R, class V, class A, class G>
void gae(const Layout& layout, const Eigen::DenseBase<R>& rewards, const Eigen::DenseBase<V>& values,
         double gamma, double lambda, const Eigen::DenseBase<A>& advantages,
         const Eigen::DenseBase<G>& returns) {
  using T = std::remove_const_t<typename A::Scalar>;
  static_assert(std::is_floating_point_v<T>, "klgrad: advantages must be float or double");
  static_assert(std::is_same_v<std::remove_const_t<typename R::Scalar>, T> &&
                    std::is_same_v<std::remove_const_t<typename V::Scalar>, T> &&
                    std::is_same_v<std::remove_const_t<typename G::Scalar>, T>,
                "klgrad: rewards, values, advantages and returns differ in type");
  using M = typename Layout::mask_scalar;
  detail::require_unit_interval("gamma", gamma);
  detail::require_unit_interval("lambda", lambda);
  const auto r = layout.view(rewards, "rewards");
  const auto v = layout.view(values, "values");
  const auto a = detail::output_of(layout, advantages, "advantages");
  const auto g = detail::output_of(layout, returns, "returns");
  const T gm = T(gamma), gl = T(gamma * lambda);
  for (Index b = 0; b < layout.sequences(); ++b) {
    const M* mask = layout.mask_of(b);
    const T* rb = layout.row(r, b);
    const T* vb = layout.row(v, b);
    T* ab = layout.row(a, b);
    T* gb = layout.row(g, b);
    T next_value = 0, next_advantage = 0;
    for (Index t = layout.size_of(b) - 1; t >= 0; --t) {
      if (!detail::valid_at(mask, t)) {
        ab[t] = T(0);
        gb[t] = T(0);
        continue;
      }
      const T rt = rb[t], vt = vb[t];  // read before writing: outputs may alias inputs
      detail::require_finite_token("rewards", b, t, rt);
      detail::require_finite_token("values", b, t, vt);
      const T delta = rt + gm * next_value - vt;
      next_advantage = delta + gl * next_advantage;
      next_value = vt;
      ab[t] = next_advantage;
      gb[t] = next_advantage + vt;
    }
  }
}

}  // namespace klgrad
