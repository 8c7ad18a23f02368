// A downstream program: evaluates a spec on a tiny packed batch and checks the result
// against the formula, so that a broken install or include path fails loudly.
#include <klgrad/klgrad.hpp>

#include <cmath>
#include <cstdio>

int main() {
  // Two sequences of 2 and 1 tokens, packed: offsets 0, 2, 3.
  Eigen::ArrayXd logp(3), ref(3);
  logp << -1.0, -0.5, -2.0;
  ref << -1.5, -0.5, -1.0;
  Eigen::Array<int, Eigen::Dynamic, 1> offsets(3);
  offsets << 0, 2, 3;

  const auto spec = klgrad::parse_spec("k1-as-loss,agg=token-sum,beta=0.5");
  Eigen::ArrayXd value(3), coef(3);
  const auto s = klgrad::evaluate(spec, klgrad::packed(logp, ref, offsets), value, coef);

  // k1(s) = s with s = logp - ref, so the values are the log-ratios and, with token-sum,
  // loss = beta * sum(s) = 0.5 * (0.5 + 0 - 1) = -0.25; k1' = 1 so every coef is beta.
  const bool ok = s.tokens == 3 && s.sequences == 2 && std::abs(s.loss + 0.25) < 1e-12 &&
                  std::abs(value(0) - 0.5) < 1e-12 && std::abs(value(2) + 1.0) < 1e-12 &&
                  (coef - 0.5).abs().maxCoeff() < 1e-12;
  std::printf("klgrad %s: loss %g, kl %g, tokens %ld -> %s\n", klgrad::version_string, s.loss,
              s.kl, static_cast<long>(s.tokens), ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
