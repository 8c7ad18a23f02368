// quickstart: the example of the README (kept identical to it), built with the examples.
#include <klgrad/klgrad.hpp>
#include <iostream>

int main() {
  using rows = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  rows logp(2, 3), ref(2, 3), mask(2, 3);        // B x T, e.g. Maps over a trainer's buffers
  logp << -1.2f, -0.7f, -2.1f,  -0.9f, -1.5f, 0.f;
  ref  << -1.0f, -0.9f, -1.8f,  -1.1f, -1.4f, 0.f;
  mask <<  1,     1,     1,      1,     1,    0;  // padding is never read

  const auto spec = klgrad::parse_spec("k3-as-loss,beta=0.04");   // GRPO's KL loss
  rows value(2, 3), coef(2, 3);
  const klgrad::summary s =
      klgrad::evaluate(spec, klgrad::padded(logp, ref, mask), value, coef);

  std::cout << "loss " << s.loss << ", kl " << s.kl << " over " << s.tokens << " tokens\n"
            << "back-propagate through logp:\n" << coef << "\n";
}
