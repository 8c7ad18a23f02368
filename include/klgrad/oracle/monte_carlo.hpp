// Monte Carlo estimates of a spec's expected per-sample gradient: a seeded sampler of
// tabular-policy sequences and the sample mean with its per-coordinate standard errors.
#pragma once

#include "enumeration.hpp"
#include "tabular.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

namespace klgrad::oracle {

/// Draws sequences from a tabular policy by inverse CDF on uniforms built from the top 53
/// bits of mt19937_64, so a seed gives the same samples with every standard library.
class sampler {
 public:
  explicit sampler(std::uint64_t seed) : rng_(seed) {}

  double uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

  sequences draw(const tabular& p, Index n) {
    const matrix pr = p.log_probs().array().exp().matrix();
    sequences y(n, p.steps);
    for (Index b = 0; b < n; ++b) {
      Index prefix = 0;
      for (Index t = 0; t < p.steps; ++t) {
        const Index r = p.row(t, prefix);
        const double u = uniform();
        Index k = 0;
        double c = pr(r, 0);
        while (k + 1 < p.vocab && u >= c) c += pr(r, ++k);
        y(b, t) = k;
        prefix = prefix * p.vocab + k;
      }
    }
    return y;
  }

 private:
  std::mt19937_64 rng_;
};

/// A Monte Carlo estimate: sample means and their standard errors (sample standard
/// deviation / sqrt(n)).
struct mc_estimate {
  Index samples = 0;
  double value = 0, value_standard_error = 0;
  vector gradient, standard_error;
};

/// Estimates E[per-sample gradient] (and E[sum_t value_t]) of the spec from n sequences
/// drawn from pi, or from mu when `behavior` is given, in batches of at most `batch`
/// sequences, each evaluated by klgrad::evaluate exactly as in enumerate() (and, as there,
/// monte_carlo<Ev, Eg>(...) takes estimator types of your own).
template <class... Estimators>
mc_estimate monte_carlo(const spec& s, const tabular& pi, const tabular& ref,
                               const tabular* behavior, Index n, std::uint64_t seed,
                               Index batch = 4096, double max_bytes = default_max_bytes) {
  if (n < 2) klgrad::detail::raise<input_error>(klgrad::detail::cat("monte_carlo needs at least 2 samples, got ", n));
  require_memory("monte_carlo",
                 sample_bytes(double(std::min(batch, n)), pi.vocab, pi.steps) +
                     2 * double(pi.parameters()) * double(sizeof(double)),
                 max_bytes);
  sampler draw(seed);
  const tabular& source = behavior ? *behavior : pi;
  // Chan et al.'s pairwise merge of (count, mean, sum of squared deviations) per batch.
  const Index m = pi.parameters();
  vector mean = vector::Zero(m), m2 = vector::Zero(m);
  double vmean = 0, vm2 = 0;
  Index count = 0;
  for (Index done = 0; done < n; done += batch) {
    const Index k = std::min(batch, n - done);
    const sample_results r = per_sample<Estimators...>(s, pi, ref, behavior, draw.draw(source, k));
    const vector bm = r.gradient.colwise().mean().transpose();
    const vector bm2 = (r.gradient.rowwise() - bm.transpose()).colwise().squaredNorm().transpose();
    const double bv = r.total_value.mean();
    const double bv2 = (r.total_value.array() - bv).square().sum();
    const double na = double(count), nb = double(k), nt = na + nb;
    const vector delta = bm - mean;
    mean += delta * (nb / nt);
    m2 += bm2 + delta.cwiseAbs2() * (na * nb / nt);
    const double dv = bv - vmean;
    vmean += dv * (nb / nt);
    vm2 += bv2 + dv * dv * (na * nb / nt);
    count += k;
  }
  mc_estimate out;
  out.samples = count;
  out.gradient = mean;
  out.standard_error = (m2 / double(count - 1) / double(count)).cwiseSqrt();
  out.value = vmean;
  out.value_standard_error = std::sqrt(vm2 / double(count - 1) / double(count));
  return out;
}

}  // namespace klgrad::oracle
