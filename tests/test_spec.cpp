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

TEST_CASE("spec: canonical form round-trips and drops defaults", "[spec]") {
  CHECK(to_string(parse_spec("k3~k3-as-loss,is=none,level=token,agg=token-mean,beta=1")) == "k3-as-loss");
  CHECK(to_string(parse_spec("k3~k2-both,beta=0.04,agg=seq-mean-token-sum-norm,agg-norm=4096")) ==
        "k3~k2-both,agg=seq-mean-token-sum-norm,agg-norm=4096,beta=0.04");
  CHECK(to_string(parse_spec("abs-in-reward,gamma=0.99,level=to-go,is=detached,is-mask=0.5:inf")) ==
        "abs-in-reward,is=detached,is-mask=0.5:inf,level=to-go,gamma=0.99");
  for (const char* text : {"k2-both,is=differentiable,is-clip=2.5,is-mask=0.1:10,level=sequence,"
                           "agg=seq-mean-token-mean,beta=0.001",
                           "k1-in-reward,level=to-go,gamma=0.3333333333333333"}) {
    const auto s = parse_spec(text);
    CHECK(parse_spec(to_string(s)) == s);
    CHECK(to_string(s) == text);
  }
}

TEST_CASE("spec: every bad spec says which word is wrong and what is allowed", "[spec][errors]") {
  using Catch::Contains;
  CHECK_THROWS_AS(parse_spec("k4-as-loss"), klgrad::spec_error);
  CHECK_THROWS_WITH(parse_spec("k4-as-loss"), Contains("unknown estimator 'k4'") && Contains("k1|k2|k3|abs"));
  CHECK_THROWS_WITH(parse_spec("k3-as-penalty"), Contains("in-reward|as-loss|both"));
  CHECK_THROWS_WITH(parse_spec("k3~k2~k1-as-loss"), Contains("more than one '~'"));
  CHECK_THROWS_WITH(parse_spec(""), Contains("EST[~EST]-PLACEMENT"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,is=always"), Contains("unknown is 'always'") && Contains("none|detached|differentiable"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,level=prefix"), Contains("unknown level 'prefix'") && Contains("token|to-go|sequence"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=mean"), Contains("unknown agg 'mean'") && Contains("seq-mean-token-sum-norm"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,temperature=2"), Contains("unknown key 'temperature'") && Contains("is-clip"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,beta"), Contains("'beta' is not key=value"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,beta=abc"), Contains("beta='abc' is not a finite number"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,beta=nan"), Contains("not a finite number"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,beta=-1"), Contains("beta=-1 must be >= 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,beta=1,beta=2"), Contains("key 'beta' given twice"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,level=to-go"), Contains("level=to-go sums in-reward penalties"));
  CHECK_THROWS_WITH(parse_spec("k3-both,level=to-go"), Contains("level=token or level=sequence"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,gamma=0.9"), Contains("gamma discounts a reward-to-go"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,level=to-go,gamma=1.5"), Contains("must lie in [0, 1]"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,is-clip=2"), Contains("need an importance weight"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,is=detached,is-clip=0"), Contains("is-clip=0 must be > 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,is=detached,is-mask=2:1"), Contains("needs 0 <= LO < HI"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,is=detached,is-mask=2"), Contains("must be LO:HI"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=seq-mean-token-sum-norm"), Contains("needs agg-norm=L"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-norm=3"), Contains("applies only to agg=seq-mean-token-sum-norm"));
}

TEST_CASE("spec: is-level, clamp and preset round-trip and print canonically", "[spec]") {
  for (const char* text :
       {"k1-in-reward,is=detached,is-level=per-decision,gamma=0.99",
        "k2-as-loss,is=differentiable,is-level=prefix,is-clip=5",
        "k3-as-loss,is=differentiable,is-level=sequence-mean,level=sequence",
        "k3-as-loss,clamp=log-ratio:-20:20/value:-10:10/est:k3",
        "k3-as-loss,is=differentiable,clamp=log-ratio:-20:20/value:-10:10/after-weight/detach-weight",
        "k2-as-loss,clamp=value:-inf:3/pass-gradient", "k3-as-loss,preset=verl",
        "k3~k2-as-loss,preset=verl", "k1-in-reward,preset=verl",
        "k3-as-loss,preset=trl,is=differentiable", "k3-as-loss,preset=nemo-rl,is=none",
        "k3-as-loss,preset=slime,clamp=value:-10:10/after-weight",
        "k3-as-loss,preset=roll,agg=token-mean", "k3-as-loss,preset=verl,clamp=none",
        "k1-as-loss,preset=open-instruct,is=differentiable,beta=0.05"}) {
    const auto s = parse_spec(text);
    CHECK(to_string(s) == text);
    CHECK(parse_spec(to_string(s)) == s);
    const auto e = klgrad::expand(s);
    CHECK(parse_spec(to_string(e)) == e);
  }
  // The preset may stand anywhere; explicit keys override it, and keys equal to the
  // preset's are dropped.
  CHECK(to_string(parse_spec("k3-as-loss,is=differentiable,preset=trl")) ==
        "k3-as-loss,preset=trl,is=differentiable");
  CHECK(to_string(parse_spec("k3-as-loss,preset=slime,agg=seq-mean-token-mean")) ==
        "k3-as-loss,preset=slime");
  CHECK(to_string(parse_spec("k3-as-loss,clamp=verl")) ==
        "k3-as-loss,clamp=log-ratio:-20:20/value:-10:10/est:k3");
  CHECK(to_string(klgrad::expand(parse_spec("k3-as-loss,preset=verl"))) ==
        "k3-as-loss,clamp=log-ratio:-20:20/value:-10:10/est:k3");
  CHECK(to_string(klgrad::expand(parse_spec("k3-as-loss,preset=nemo-rl"))) ==
        "k3-as-loss,is=differentiable,clamp=log-ratio:-20:20/value:-10:10/after-weight/"
        "detach-weight");
  CHECK(parse_spec("k3-as-loss,preset=verl") != parse_spec("k3-as-loss,clamp=verl"));
  CHECK(parse_spec("k3-as-loss,preset=roll").aggregation ==
        klgrad::aggregation::seq_mean_token_mean);
}

TEST_CASE("spec: meaningless is-level, clamp and preset combinations say why", "[spec][errors]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is-level=prefix"), Contains("needs a weight"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=detached,is-level=prefix,level=to-go"),
                    Contains("use is-level=per-decision"));
  CHECK_THROWS_WITH(parse_spec("k2-as-loss,is=detached,is-level=prefix,level=sequence"),
                    Contains("is-level=sequence-mean"));
  CHECK_THROWS_WITH(parse_spec("k2-as-loss,is=detached,is-level=per-decision"),
                    Contains("use is-level=prefix"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=detached,is-level=per-decision,level=to-go"),
                    Contains("keep level=token"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=differentiable,is-level=per-decision"),
                    Contains("use is=detached"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=detached,is-level=sequence-mean,level=to-go"),
                    Contains("corrects no reward-to-go"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=detached,gamma=0.9"),
                    Contains("is-level=per-decision"));
  CHECK_THROWS_WITH(parse_spec("k1-in-reward,is=detached,is-level=rolling"),
                    Contains("token|prefix|per-decision|sequence-mean"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=value:3:1"), Contains("needs LO < HI"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=value:1"), Contains("must be value:LO:HI"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=log:1:2"), Contains("unknown item 'log:1:2'"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=est:k4"), Contains("unknown estimator 'k4'"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=log-ratio:-1:1/after-weight"),
                    Contains("needs value:LO:HI"));
  CHECK_THROWS_WITH(parse_spec("k3-in-reward,clamp=value:-1:1/after-weight"),
                    Contains("drop after-weight"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=value:-1:1/detach-weight"),
                    Contains("needs log-ratio:LO:HI"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,preset=pytorch"), Contains("unknown preset 'pytorch'") &&
                    Contains("verl|openrlhf|nemo-rl|trl|slime|open-instruct|roll|easyr1"));
  CHECK_THROWS_WITH(parse_spec("k1-as-loss,preset=trl"), Contains("no k1 estimator"));
  CHECK_THROWS_WITH(parse_spec("k3-in-reward,preset=trl"), Contains("no KL in the reward"));
  CHECK_THROWS_WITH(parse_spec("abs-as-loss,preset=openrlhf"), Contains("no abs estimator"));
  CHECK_THROWS_WITH(parse_spec("k3~k1-as-loss,preset=verl"), Contains("no straight-through"));
  CHECK_THROWS_WITH(parse_spec("k2-as-loss,preset=roll"), Contains("KL loss cannot use k2"));
  CHECK_THROWS_WITH(parse_spec("k3-in-reward,preset=open-instruct"), Contains("no KL in the reward"));
}
