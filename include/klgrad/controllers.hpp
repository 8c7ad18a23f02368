// KL coefficient controllers: a fixed beta, and Ziegler et al.'s adaptive proportional
// controller as PPO trainers (verl, OpenRLHF, ROLL, TRL) use it.
#pragma once

#include "support/errors.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace klgrad {

/// A constant beta; update() only checks its arguments.
class fixed_kl_controller {
 public:
  explicit fixed_kl_controller(double beta) : beta_(beta) {
    if (!std::isfinite(beta) || beta < 0)
      detail::raise<input_error>(detail::cat("fixed_kl_controller: beta = ", beta,
                                             " must be finite and >= 0"));
  }
  double beta() const { return beta_; }
  /// Returns beta unchanged.
  double update(double current_kl, std::int64_t n_steps) {
    if (!std::isfinite(current_kl))
      detail::raise<input_error>(detail::cat("fixed_kl_controller::update: current_kl = ",
                                             current_kl, " is not finite"));
    if (n_steps < 0)
      detail::raise<input_error>(detail::cat("fixed_kl_controller::update: n_steps = ", n_steps,
                                             " must be >= 0"));
    return beta_;
  }

 private:
  double beta_;
};

/// Ziegler et al. (2019)'s proportional controller of beta towards a target KL:
///   error = clip(current_kl / target - 1, -clip, clip),   beta <- beta * (1 + error * n_steps / horizon)
/// with clip = 0.2 as everywhere it is used. current_kl is the batch's measured KL (verl:
/// the batch mean of each sequence's masked mean KL), n_steps the samples it was measured
/// on (the batch size). beta stays >= 0 as long as n_steps <= horizon / clip.
class adaptive_kl_controller {
 public:
  adaptive_kl_controller(double init_beta, double target, double horizon, double clip = 0.2)
      : beta_(init_beta), target_(target), horizon_(horizon), clip_(clip) {
    auto fail = [](const char* what, double v, const char* need) {
      detail::raise<input_error>(detail::cat("adaptive_kl_controller: ", what, " = ", v,
                                             " must be ", need));
    };
    if (!std::isfinite(init_beta) || init_beta < 0) fail("init_beta", init_beta, "finite and >= 0");
    if (!std::isfinite(target) || !(target > 0)) fail("target", target, "finite and > 0");
    if (!std::isfinite(horizon) || !(horizon > 0)) fail("horizon", horizon, "finite and > 0");
    if (!std::isfinite(clip) || clip < 0) fail("clip", clip, "finite and >= 0");
  }
  double beta() const { return beta_; }
  double target() const { return target_; }
  double horizon() const { return horizon_; }
  double clip() const { return clip_; }

  /// The clipped proportional error of a measured KL: clip(current_kl / target - 1).
  double error(double current_kl) const {
    return std::clamp(current_kl / target_ - 1.0, -clip_, clip_);
  }

  /// Applies one update and returns the new beta.
  double update(double current_kl, std::int64_t n_steps) {
    if (!std::isfinite(current_kl))
      detail::raise<input_error>(detail::cat("adaptive_kl_controller::update: current_kl = ",
                                             current_kl, " is not finite"));
    if (n_steps < 0)
      detail::raise<input_error>(detail::cat("adaptive_kl_controller::update: n_steps = ",
                                             n_steps, " must be >= 0"));
    beta_ *= 1.0 + error(current_kl) * double(n_steps) / horizon_;
    return beta_;
  }

 private:
  double beta_, target_, horizon_, clip_;
};

}  // namespace klgrad
