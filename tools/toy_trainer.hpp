// A toy KL-regularised policy-gradient trainer on a tabular autoregressive policy: the
// problem (reference, reward per sequence, start policy, beta), its analytic optimum
// pi*(y) ~ ref(y) exp(R(y)/beta), exact measurements from the oracle, and plain-SGD training
// whose KL term comes from klgrad::evaluate exactly as a real trainer would use it. Used by
// `klgrad report` and its test; not part of the library (it is no oracle, it uses them).
#pragma once

#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/monte_carlo.hpp>
#include <klgrad/oracle/tabular.hpp>
#include <klgrad/oracle/targets.hpp>

#include <klgrad/batch.hpp>
#include <klgrad/errors.hpp>
#include <klgrad/evaluate.hpp>
#include <klgrad/spec.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace klgrad::toy {

using namespace klgrad::oracle;  // the toy trainer measures itself with the oracles

/// A KL-regularised problem: maximise J(pi) = E_pi[R] - beta KL_seq(pi || ref) over tabular
/// policies, starting from `start`. reward holds R(y) for the V^T sequences in
/// lexicographic order (all_sequences()).
struct problem {
  std::string name;
  tabular ref, start;
  vector reward;
  double beta = 0.1;
};

/// The built-in problem of a given size: ref logits ~ N(0, 1), rewards ~ U(0, 1) per
/// sequence, both from `seed`; the policy starts at the reference (as an RLHF policy does).
inline problem make_problem(std::string name, Index vocab, Index steps, double beta,
                            std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  problem p;
  p.name = std::move(name);
  p.ref = tabular::random(vocab, steps, rng, 1.0);
  p.start = p.ref;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  p.reward.resize(tabular::power(vocab, steps));
  for (Index i = 0; i < p.reward.size(); ++i) p.reward(i) = u(rng);
  p.beta = beta;
  return p;
}

/// Probability of every sequence (V^T, lexicographic order).
inline vector sequence_probs(const tabular& p) {
  const sequences y = all_sequences(p.vocab, p.steps);
  return token_log_probs(p, p.log_probs(), y).rowwise().sum().array().exp().matrix();
}

/// The analytic optimum as a tabular policy: with V*(y) = R(y)/beta for complete sequences
/// and V*(h) = log sum_y ref(y|h) exp(V*(h y)) for prefixes, pi*(y|h) = ref(y|h)
/// exp(V*(h y) - V*(h)); its logits are these log-probabilities. Then pi*(y) = ref(y)
/// exp(R(y)/beta) / Z with log Z = V*(root), and max J = J(pi*) = beta log Z.
inline tabular optimum(const problem& pb, double* log_partition = nullptr) {
  const tabular& ref = pb.ref;
  const Index V = ref.vocab;
  const matrix lr = ref.log_probs();
  vector next = pb.reward / pb.beta;
  matrix z(ref.rows(), V);
  for (Index t = ref.steps - 1; t >= 0; --t) {
    vector cur(tabular::power(V, t));
    for (Index prefix = 0; prefix < cur.size(); ++prefix) {
      const Index r = ref.row(t, prefix);
      vector q(V);
      for (Index y = 0; y < V; ++y) q(y) = lr(r, y) + next(prefix * V + y);
      const double m = q.maxCoeff();
      const double lse = m + std::log((q.array() - m).exp().sum());
      cur(prefix) = lse;
      z.row(r) = (q.array() - lse).matrix().transpose();
    }
    next = std::move(cur);
  }
  if (log_partition) *log_partition = next(0);
  return tabular(V, ref.steps, std::move(z));
}

/// Exact measurements of a policy (from the oracle, never from samples).
struct measures {
  double reward = 0;     ///< E_pi[R]
  double kl = 0;         ///< KL_seq(pi || ref)
  double objective = 0;  ///< J = E[R] - beta KL
  double tv = 0;         ///< total variation 1/2 sum_y |pi(y) - pi*(y)|
};

inline measures measure(const problem& pb, const tabular& pi, const vector& optimum_probs) {
  const vector p = sequence_probs(pi);
  measures m;
  m.reward = p.dot(pb.reward);
  m.kl = rkl_value(pi, pb.ref);
  m.objective = m.reward - pb.beta * m.kl;
  m.tv = 0.5 * (p - optimum_probs).cwiseAbs().sum();
  return m;
}

/// Settings of one training run.
struct train_options {
  Index batch = 64;            ///< sequences sampled per step
  Index steps = 1500;          ///< sampled batches
  Index epochs = 1;            ///< SGD updates per batch; > 1 is the off-policy (PPO) regime
  double learning_rate = 2.0;  ///< plain SGD on the logits
  std::uint64_t seed = 1;      ///< sampler seed
  Index record_every = 10;     ///< steps between exact measurements
  double logit_bound = 100.0;  ///< |logit| above this (or a non-finite one) is divergence
};

/// One recorded point of a run (after `step` batches).
struct train_point {
  Index step = 0;
  measures at;
};

struct train_result {
  tabular policy;                 ///< the final policy
  std::vector<train_point> curve;  ///< step 0, every record_every steps, and the last step
  bool diverged = false;
  Index steps_done = 0;
};

/// The spec as the toy trainer evaluates it: the user's term, weights and level, with
/// agg=seq-mean-token-sum and the problem's beta, so that coef_{b,t} = beta c_{b,t} / B and
/// sum_{b,t} coef_{b,t} score_{b,t} is the batch mean of the per-sample KL gradients, on the
/// same scale as the task term's batch mean.
inline spec trainer_spec(spec s, double beta) {
  s.aggregation = aggregation::seq_mean_token_sum;
  s.aggregation_constants = {};
  s.beta = beta;
  return s;
}

/// Trains a copy of pb.start by minimising L = -E[R] + beta * (KL term of `kl`).
///
/// Each step samples `batch` sequences from the current policy mu (oracle::sampler, seeded)
/// and then makes `epochs` SGD updates z <- z - lr * dL/dz on that batch, where per token
///   dL/dlp_{b,t} = -W_b (R_b - baseline_b) / B  +  coef_{b,t},
///   coef = klgrad::evaluate(trainer_spec(kl), padded(lp, lr).with_behavior(lb)),
/// lp from the policy being updated, lr from ref and lb from mu (the sampling policy), and
/// each token's coefficient goes through its softmax score dlp/dz_row = onehot(y) - pi_row.
/// The task term is the REINFORCE estimate of grad E[R] with the leave-one-out baseline
/// (mean reward of the other B-1 sequences), weighted by the sequence ratio
/// W_b = prod_t pi/mu (1 on the first epoch): unbiased on every epoch, so the only
/// off-policy error is the KL term's. `record(step, policy)` is called at every recorded
/// step (for progress reports); it may be an empty lambda.
template <class Record>
train_result train(const problem& pb, const spec& kl, const train_options& o, Record&& record) {
  if (o.batch < 2 || o.steps < 0 || o.epochs < 1 || !(o.learning_rate > 0) || o.record_every < 1)
    klgrad::detail::raise<input_error>(klgrad::detail::cat("train: needs batch >= 2, steps >= 0, epochs >= 1, "
                                           "learning_rate > 0 and record_every >= 1"));
  const spec s = trainer_spec(kl, pb.beta);
  tabular pi = pb.start;
  const Index V = pi.vocab, T = pi.steps, B = o.batch;
  const tabular pstar = optimum(pb);
  const vector pstar_probs = sequence_probs(pstar);
  const matrix lr_rows = pb.ref.log_probs();
  sampler draw(o.seed);

  train_result out;
  out.curve.push_back({0, measure(pb, pi, pstar_probs)});
  record(Index(0), pi);
  matrix value(B, T), coef(B, T), lp(B, T), lb(B, T), lr(B, T), grad(pi.rows(), V);
  std::vector<Index> rows(std::size_t(B * T));
  vector advantage(B);
  for (Index step = 1; step <= o.steps; ++step) {
    const matrix mu_rows = pi.log_probs();
    const sequences y = draw.draw(pi, B);
    double total = 0;
    vector r(B);
    for (Index b = 0; b < B; ++b) {
      Index outcome = 0;
      for (Index t = 0; t < T; ++t) {
        rows[std::size_t(b * T + t)] = token_row(pi, y, b, t);
        outcome = outcome * V + y(b, t);
      }
      r(b) = pb.reward(outcome);
      total += r(b);
    }
    for (Index b = 0; b < B; ++b) advantage(b) = r(b) - (total - r(b)) / double(B - 1);
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < T; ++t) {
        const Index row = rows[std::size_t(b * T + t)];
        lb(b, t) = mu_rows(row, y(b, t));
        lr(b, t) = lr_rows(row, y(b, t));
      }
    for (Index e = 0; e < o.epochs && !out.diverged; ++e) {
      const matrix lp_rows = e == 0 ? mu_rows : pi.log_probs();
      for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) lp(b, t) = lp_rows(rows[std::size_t(b * T + t)], y(b, t));
      klgrad::evaluate(s, klgrad::padded(lp, lr).with_behavior(lb), value, coef);
      grad.setZero();
      for (Index b = 0; b < B; ++b) {
        const double w = std::exp((lp.row(b) - lb.row(b)).sum());
        const double task = -w * advantage(b) / double(B);
        for (Index t = 0; t < T; ++t) {
          const Index row = rows[std::size_t(b * T + t)];
          const double c = task + coef(b, t);
          grad.row(row) -= c * lp_rows.row(row).array().exp().matrix();
          grad(row, y(b, t)) += c;
        }
      }
      pi.logits -= o.learning_rate * grad;
      if (!pi.logits.allFinite() || pi.logits.cwiseAbs().maxCoeff() > o.logit_bound)
        out.diverged = true;
    }
    out.steps_done = step;
    if (out.diverged || step % o.record_every == 0 || step == o.steps) {
      if (pi.logits.allFinite()) {
        out.curve.push_back({step, measure(pb, pi, pstar_probs)});
        record(step, pi);
      }
    }
    if (out.diverged) break;
  }
  out.policy = pi;
  return out;
}

template <class Record>
train_result train(const problem& pb, const std::string& kl, const train_options& o,
                   Record&& record) {
  return train(pb, parse_spec(kl), o, std::forward<Record>(record));
}

inline train_result train(const problem& pb, const spec& kl, const train_options& o) {
  return train(pb, kl, o, [](Index, const tabular&) {});
}

/// Mean of the recorded measurements over the last `fraction` of the run's steps: the
/// run's end point, averaged to damp the SGD noise of single iterates.
inline measures window_mean(const train_result& r, double fraction = 0.2) {
  const double from = double(r.steps_done) * (1.0 - fraction);
  measures m;
  Index n = 0;
  for (const auto& p : r.curve)
    if (double(p.step) >= from) {
      m.reward += p.at.reward;
      m.kl += p.at.kl;
      m.objective += p.at.objective;
      m.tv += p.at.tv;
      ++n;
    }
  if (n == 0) return r.curve.empty() ? m : r.curve.back().at;
  m.reward /= double(n);
  m.kl /= double(n);
  m.objective /= double(n);
  m.tv /= double(n);
  return m;
}

}  // namespace klgrad::toy
