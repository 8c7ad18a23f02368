// Shared by the tests of the full-vocabulary kernels: long-double log-softmax, central
// differences, random rows and a relative comparison against long-double oracles.
#pragma once

#include <klgrad/views/batch.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace logits_oracle {

using klgrad::Index;
using LD = long double;
using Rows = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline std::vector<LD> log_softmax(const double* z, Index V, LD tau) {
  LD m = -INFINITY;
  for (Index j = 0; j < V; ++j) m = std::max(m, LD(z[j]) / tau);
  LD s = 0;
  for (Index j = 0; j < V; ++j) s += std::exp(LD(z[j]) / tau - m);
  std::vector<LD> out(static_cast<std::size_t>(V));
  for (Index j = 0; j < V; ++j) out[std::size_t(j)] = LD(z[j]) / tau - m - std::log(s);
  return out;
}

/// d value / d z_j by Richardson-extrapolated central differences of the oracle value.
template <class F>
std::vector<LD> central_differences(std::vector<double> z, F value) {
  std::vector<LD> out(z.size());
  for (std::size_t j = 0; j < z.size(); ++j) {
    auto diff = [&](double h) {
      const double z0 = z[j];
      z[j] = z0 + h;
      const LD up = value(z);
      z[j] = z0 - h;
      const LD down = value(z);
      z[j] = z0;
      return (up - down) / (2 * LD(h));
    };
    const double h = 1.0 / 1024;  // exact in binary, so z +- h is the intended point
    out[j] = (4 * diff(h / 2) - diff(h)) / 3;
  }
  return out;
}

inline Rows random_rows(Index n, Index v, double scale, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  Rows x(n, v);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  return x;
}

/// |a - b| <= tol max(1, |b|); an infinite b must be met exactly.
inline bool close(double a, LD b, double tol) {
  if (std::isinf(double(b))) return a == double(b);
  return std::abs(LD(a) - b) <= LD(tol) * std::max(LD(1), std::abs(b));
}

}  // namespace logits_oracle
