// The categorical (softmax) policy over the logits of one state: probabilities, the scores
// d log pi(i) / dz, and the exact divergences to a reference with their logit gradients.
#pragma once

#include <Eigen/Core>
#include <cmath>

namespace klgrad::oracle {

using Eigen::Index;
using vector = Eigen::VectorXd;
/// Row-major matrix: the shape of klgrad's padded batches and of a tabular policy's logits.
using matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// log softmax(z), computed as z - max - log sum exp(z - max).
inline vector log_softmax(const Eigen::Ref<const vector>& z) {
  const double m = z.maxCoeff();
  return (z.array() - m - std::log((z.array() - m).exp().sum())).matrix();
}

inline vector softmax(const Eigen::Ref<const vector>& z) {
  return log_softmax(z).array().exp().matrix();
}

/// The score of token i: d log pi(i) / dz = e_i - pi.
inline vector score(const Eigen::Ref<const vector>& pi, Index i) {
  vector g = -pi;
  g(i) += 1.0;
  return g;
}

/// A softmax policy over one state's logits.
struct categorical {
  vector logits;
  vector log_probs() const { return log_softmax(logits); }
  vector probs() const { return softmax(logits); }
  Index size() const { return logits.size(); }
};

/// KL(pi || ref) = E_pi[lp - lr] of one state, from log-probabilities.
inline double rkl(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr) {
  return (lp.array().exp() * (lp - lr).array()).sum();
}

/// KL(ref || pi) = E_ref[lr - lp] of one state.
inline double fkl(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr) {
  return (lr.array().exp() * (lr - lp).array()).sum();
}

/// d KL(pi || ref) / dz = pi * (s - RKL), s = lp - lr.
inline vector rkl_gradient(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr) {
  const vector pi = lp.array().exp().matrix();
  return (pi.array() * ((lp - lr).array() - rkl(lp, lr))).matrix();
}

/// d KL(ref || pi) / dz = pi - ref.
inline vector fkl_gradient(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr) {
  return (lp.array().exp() - lr.array().exp()).matrix();
}

/// E_pi[k(s)] of one state, for any estimator k given as a callable of s.
template <class K>
double expectation(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr, K k) {
  double e = 0.0;
  for (Index i = 0; i < lp.size(); ++i) e += std::exp(lp(i)) * k(lp(i) - lr(i));
  return e;
}

/// d E_pi[k(s)] / dz = pi * (u - E_pi[u]) with u = k(s) + k'(s): the score-function part
/// (k) plus the pathwise part (k', since ds/dz = score).
template <class K, class DK>
vector expectation_gradient(const Eigen::Ref<const vector>& lp, const Eigen::Ref<const vector>& lr,
                            K k, DK dk) {
  const Index n = lp.size();
  vector u(n), pi = lp.array().exp().matrix();
  for (Index i = 0; i < n; ++i) u(i) = k(lp(i) - lr(i)) + dk(lp(i) - lr(i));
  return (pi.array() * (u.array() - pi.dot(u))).matrix();
}

}  // namespace klgrad::oracle
