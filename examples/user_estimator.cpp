// Your own estimator end to end: Neyman's chi-square (examples/neyman_chi2.hpp) through the
// fused kernel with a runtime spec for everything else, and through the exact oracle, whose
// expected gradient shows which divergence each placement follows.
#include "neyman_chi2.hpp"

#include <klgrad/klgrad.hpp>
#include <klgrad/oracle/enumeration.hpp>

#include <iostream>
#include <random>

int main() {
  using rows = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  rows logp(1, 3), ref(1, 3), value(1, 3), coef(1, 3);
  logp << -1.2, -0.7, -2.1;
  ref << -1.0, -0.9, -1.8;
  // The placement, clamp, level and aggregation come from the spec; the estimator is yours.
  const auto spec = klgrad::parse_spec("k1-both,clamp=log-ratio:-20:20,agg=token-mean");
  const klgrad::summary s =
      klgrad::evaluate<neyman_chi2>(spec, klgrad::padded(logp, ref), value, coef);
  std::cout << "chi2 estimate per token: " << value << "\ncoef: " << coef << "\nloss "
            << s.loss << "\n";

  // The exact oracle: a categorical policy over 4 tokens. both<chi2> (k * score + k') is the
  // exact gradient of chi2(ref || pi) = sum ref^2 / pi - 1; as-loss alone is not.
  std::mt19937_64 rng(7);
  const auto pi = klgrad::oracle::tabular::random(4, 1, rng);
  const auto ref_policy = klgrad::oracle::tabular::random(4, 1, rng);
  for (const char* text : {"k1-both", "k1-as-loss"}) {
    const auto e = klgrad::oracle::enumerate<neyman_chi2>(klgrad::parse_spec(text), pi, ref_policy);
    std::cout << text << " with neyman_chi2: E[value] = " << e.value
              << ", E[gradient] = " << e.gradient.transpose() << "\n";
  }
}
