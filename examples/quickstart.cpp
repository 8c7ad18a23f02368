// quickstart: the KL term of a padded batch of two sequences, from one spec string.
#include <klgrad/klgrad.hpp>

#include <iostream>

int main() {
  using rows = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  rows logp(2, 4), ref(2, 4), mask(2, 4);  // B x T log-probs of the sampled tokens
  logp << -1.2, -0.7, -2.1, -0.3,  -0.9, -1.5, -0.4, 0.0;
  ref  << -1.0, -0.9, -1.8, -0.5,  -1.1, -1.4, -0.6, 0.0;
  mask <<  1,    1,    1,    1,     1,    1,    1,   0;  // second sequence is one shorter

  const klgrad::spec spec = klgrad::parse_spec("k3-as-loss,beta=0.04");
  rows value(2, 4), coef(2, 4);
  const klgrad::summary s =
      klgrad::evaluate(spec, klgrad::padded(logp, ref, mask), value, coef);

  std::cout << "spec " << klgrad::to_string(spec) << ": loss " << s.loss << ", kl " << s.kl
            << " over " << s.tokens << " tokens\n"
            << "coef (d loss / d logp, back-propagate through logp):\n" << coef << '\n';
}
