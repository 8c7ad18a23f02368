// Tests of spec.hpp: parsing, canonical printing, round trips and every error.
#include <klgrad/spec.hpp>

#include <catch2/catch.hpp>

using klgrad::parse_spec;

TEST_CASE("spec: defaults and the issue's examples parse", "[spec]") {
  const auto s = parse_spec("k1-in-reward");
  CHECK(s.term.value_estimator == klgrad::estimator::k1);
  CHECK(s.term.where == klgrad::placement::in_reward);
  CHECK(s.importance.mode == klgrad::weighting::none);
  CHECK(s.level == klgrad::level::token);
  CHECK(s.gamma == 1.0);
  CHECK(s.aggregation == klgrad::aggregation::token_mean);
  CHECK(s.beta == 1.0);
  for (const char* text : {"k1-in-reward,level=to-go", "k2-as-loss,is=detached,is-clip=2",
                           "k3~k2-as-loss",
                           "k3-as-loss,is=differentiable,agg=seq-mean-token-mean,beta=0.04"})
    CHECK(to_string(parse_spec(text)) == text);
}
