// is-level against the exact oracle (SPEC 5 off-policy): samples from mu, exact expectation
// by enumeration through klgrad::evaluate. Per-decision weights give the whole sequence
// RKL gradient, prefix weights part 1, token weights neither (T >= 2).
#include "oracle_cases.hpp"

using namespace oracle_test;

TEST_CASE("is-level: per-decision weights restore the whole sequence RKL gradient from mu",
          "[oracle][importance]") {
  for (const char* text : {"k1-in-reward,is=detached,is-level=per-decision",
                           "k1-in-reward,is=differentiable,is-level=prefix"})
    for (const auto& c : cases()) {
      INFO(text << " on " << c.name());
      CHECK(relative_error(expect(text, c, true).gradient, rkl_gradient(c.pi, c.ref)) <
            exact_tolerance);
    }
}

TEST_CASE("is-level: prefix weights restore part 1 from mu, token weights do not",
          "[oracle][importance]") {
  for (const auto& c : sequence_cases()) {
    INFO(c.name());
    const vector part1 = rkl_token_gradient(c.pi, c.ref);
    CHECK(relative_error(expect("k1-in-reward,is=detached,is-level=prefix", c, true).gradient,
                         part1) < exact_tolerance);
    CHECK(relative_error(expect("k2-as-loss,is=detached,is-level=prefix", c, true).gradient,
                         part1) < exact_tolerance);
    CHECK(relative_error(expect("k1-in-reward,is=detached", c, true).gradient, part1) >
          miss_tolerance);
  }
}
