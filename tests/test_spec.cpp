// Tests of spec.hpp: parsing, canonical printing, round trips and every error.
#include <klgrad/spec/spec.hpp>

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
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-norm=3"),
                    Contains("agg-norm=L applies only to agg=token-sum-norm and "
                             "agg=seq-mean-token-sum-norm, not agg=token-mean"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=token-sum-norm"),
                    Contains("agg=token-sum-norm needs agg-norm=L with L > 0"));
}

TEST_CASE("spec: the aggregation constants agg-eps, agg-seq-eps, agg-scale and token-sum-norm",
          "[spec]") {
  // Defaults: no epsilon, scale 1.
  const auto plain = parse_spec("k3-as-loss");
  CHECK(plain.aggregation_constants.eps == 0.0);
  CHECK(plain.aggregation_constants.seq_eps == 0.0);
  CHECK(plain.aggregation_constants.scale == 1.0);
  // Canonical order: agg, agg-norm, agg-eps, agg-seq-eps, agg-scale, beta; defaults dropped.
  CHECK(to_string(parse_spec("k3-as-loss,agg-scale=8,beta=0.001,agg-seq-eps=1e-8,"
                             "agg=seq-mean-token-mean,agg-eps=1e-8")) ==
        "k3-as-loss,agg=seq-mean-token-mean,agg-eps=1e-08,agg-seq-eps=1e-08,agg-scale=8,"
        "beta=0.001");
  CHECK(to_string(parse_spec("k3-as-loss,agg-eps=0,agg-seq-eps=0,agg-scale=1")) == "k3-as-loss");
  for (const char* text :
       {"k3-as-loss,agg=token-sum-norm,agg-norm=4096", "k2-as-loss,agg=token-sum-norm,agg-norm=3,agg-scale=0.125",
        "k3-as-loss,agg-eps=1e-08,agg-scale=4", "k1-in-reward,agg=seq-mean-token-sum,agg-eps=1e-08",
        "k3-as-loss,agg=seq-mean-token-sum-norm,agg-norm=512,agg-eps=0.5,agg-scale=0.25",
        "k3-as-loss,agg=seq-mean-token-mean,agg-seq-eps=1e-08,agg-scale=0.3333333333333333",
        "k3-as-loss,agg=token-sum,agg-scale=2"}) {
    const auto s = parse_spec(text);
    CHECK(to_string(s) == text);
    CHECK(parse_spec(to_string(s)) == s);
  }
  const auto s = parse_spec("k3-as-loss,agg=seq-mean-token-mean,agg-eps=0.5,agg-seq-eps=0.25,agg-scale=3");
  CHECK(s.aggregation_constants.eps == 0.5);
  CHECK(s.aggregation_constants.seq_eps == 0.25);
  CHECK(s.aggregation_constants.scale == 3.0);
  CHECK(parse_spec("k3-as-loss,agg=token-sum-norm,agg-norm=9").aggregation ==
        klgrad::aggregation::token_sum_norm);
  // a_{b,t} with the constants: scale / ((B + eps) (n_b + seq_eps)).
  CHECK(klgrad::aggregation_weight(s, 4, 100, 2) == Approx(3.0 / (2.5 * 4.25)).epsilon(1e-15));
  CHECK(klgrad::aggregation_weight(parse_spec("k3-as-loss,agg-eps=0.5,agg-scale=2"), 4, 9, 2) ==
        Approx(2.0 / 9.5).epsilon(1e-15));
  CHECK(klgrad::aggregation_weight(parse_spec("k3-as-loss,agg=token-sum-norm,agg-norm=8"), 4, 9, 2) ==
        0.125);
}

TEST_CASE("spec: bad aggregation constants name the key and what is allowed", "[spec][errors]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-eps=-1"), Contains("agg-eps=-1 must be >= 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-eps=x"), Contains("agg-eps='x' is not a finite number"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-eps=inf"), Contains("agg-eps='inf' is not a finite number"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=token-sum,agg-eps=1e-8"),
                    Contains("agg=token-sum divides by none") &&
                        Contains("token-mean, seq-mean-token-sum, seq-mean-token-mean or "
                                 "seq-mean-token-sum-norm"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=token-sum-norm,agg-norm=4,agg-eps=1e-8"),
                    Contains("agg=token-sum-norm divides by none"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-seq-eps=-0.5"), Contains("agg-seq-eps=-0.5 must be >= 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-seq-eps=1e-8"),
                    Contains("only agg=seq-mean-token-mean divides by, not agg=token-mean"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=seq-mean-token-sum,agg-seq-eps=1e-8"),
                    Contains("not agg=seq-mean-token-sum"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-scale=0"), Contains("agg-scale=0 must be > 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-scale=-2"), Contains("agg-scale=-2 must be > 0"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-scale=nan"), Contains("agg-scale='nan' is not a finite number"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-scale=2,agg-scale=3"), Contains("key 'agg-scale' given twice"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg=sum-norm"),
                    Contains("unknown agg 'sum-norm'") && Contains("token-sum-norm"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,agg-epsilon=1"),
                    Contains("unknown key 'agg-epsilon'") && Contains("agg-eps, agg-seq-eps, agg-scale"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,preset=roll,agg=seq-mean-token-sum-norm,agg-norm=512"),
                    Contains("ROLL's seq-mean-token-sum-norm divides the token sum by L only") &&
                        Contains("agg=token-sum-norm,agg-norm=L"));
}

TEST_CASE("spec: a preset's denominator epsilons follow the final agg and round-trip", "[spec]") {
  struct row {
    const char* text;
    double eps, seq_eps;
  };
  const row table[] = {
      {"k3-as-loss,preset=verl", 0, 0},                                     // token-mean: N
      {"k3-as-loss,preset=verl,agg=seq-mean-token-mean", 0, 1e-8},          // n_b + 1e-8, B
      {"k3-as-loss,preset=verl,agg=seq-mean-token-sum", 0, 0},
      {"k3-as-loss,preset=nemo-rl", 1e-8, 0},                               // N + 1e-8
      {"k3-as-loss,preset=nemo-rl,agg=seq-mean-token-mean", 1e-8, 1e-8},
      {"k3-as-loss,preset=roll", 1e-8, 1e-8},                               // seq-mean-token-mean
      {"k3-as-loss,preset=roll,agg=seq-mean-token-sum", 1e-8, 0},
      {"k3-as-loss,preset=roll,agg=token-mean", 0, 0},
      {"k3-as-loss,preset=roll,agg=token-sum-norm,agg-norm=512", 0, 0},
      {"k3-as-loss,preset=openrlhf", 0, 0},
      {"k3-as-loss,preset=openrlhf,agg=seq-mean-token-mean", 0, 1e-8},
      {"k3-as-loss,preset=trl", 0, 0},
      {"k3-as-loss,preset=slime", 0, 0},
      {"k3-as-loss,preset=open-instruct", 0, 0},
      {"k3-as-loss,preset=easyr1", 0, 0},
      // Written out, they override the preset's and are printed.
      {"k3-as-loss,preset=roll,agg-eps=0", 0, 1e-8},
      {"k3-as-loss,preset=verl,agg=seq-mean-token-mean,agg-seq-eps=0", 0, 0},
      {"k3-as-loss,preset=trl,agg-eps=1e-08", 1e-8, 0},
  };
  for (const auto& r : table) {
    const auto s = parse_spec(r.text);
    INFO(r.text);
    CHECK(s.aggregation_constants.eps == r.eps);
    CHECK(s.aggregation_constants.seq_eps == r.seq_eps);
    CHECK(to_string(s) == r.text);
    CHECK(parse_spec(to_string(s)) == s);
    const auto e = klgrad::expand(s);
    CHECK(parse_spec(to_string(e)) == e);
  }
  // expand() writes the preset's epsilons out as keys.
  CHECK(to_string(klgrad::expand(parse_spec("k3-as-loss,preset=roll"))) ==
        "k3-as-loss,clamp=value:-10:10/est:k3,agg=seq-mean-token-mean,agg-eps=1e-08,"
        "agg-seq-eps=1e-08");
  CHECK(to_string(klgrad::expand(parse_spec("k3-as-loss,preset=nemo-rl,agg-scale=8"))) ==
        "k3-as-loss,is=differentiable,clamp=log-ratio:-20:20/value:-10:10/after-weight/"
        "detach-weight,agg-eps=1e-08,agg-scale=8");
  // The preset's epsilon follows an agg written before or after it.
  CHECK(parse_spec("k3-as-loss,agg=seq-mean-token-mean,preset=verl") ==
        parse_spec("k3-as-loss,preset=verl,agg=seq-mean-token-mean"));
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
        "detach-weight,agg-eps=1e-08");
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

// Expected specs are the preset's term written in klgrad's words from docs/presets.md (each
// trainer's table of names), independently of estimator_aliases.
TEST_CASE("spec: a trainer's own estimator names under its preset are its klgrad terms",
          "[spec][aliases]") {
  const std::pair<const char*, const char*> cases[] = {
      {"kl-in-reward,preset=verl", "k1-in-reward,preset=verl"},
      {"kl-as-loss,preset=verl", "k1-as-loss,preset=verl"},
      {"mse-as-loss,preset=verl", "k2-as-loss,preset=verl"},
      {"low_var_kl-as-loss,preset=verl", "k3-as-loss,preset=verl"},
      {"k3+-as-loss,preset=verl", "k3~k2-as-loss,preset=verl"},
      {"low_var_kl+-as-loss,preset=verl", "k3~k2-as-loss,preset=verl"},
      {"kl+-as-loss,preset=verl", "k1~k2-as-loss,preset=verl"},
      {"abs+-both,preset=verl", "abs~k2-both,preset=verl"},
      {"mse+-as-loss,preset=verl", "k2-as-loss,preset=verl"},
      {"k2+-as-loss,preset=verl", "k2-as-loss,preset=verl"},
      {"kl-in-reward,preset=easyr1", "k1-in-reward,preset=easyr1"},
      {"mse-as-loss,preset=easyr1", "k2-as-loss,preset=easyr1"},
      {"low_var_kl-as-loss,preset=easyr1", "k3-as-loss,preset=easyr1"},
      {"kl-in-reward,preset=roll", "k1-in-reward,preset=roll"},
      {"mse-in-reward,preset=roll", "k2-in-reward,preset=roll"},
      {"low_var_kl-as-loss,preset=slime",
       "k3-as-loss,preset=slime,clamp=value:-10:10/after-weight"},
      {"low_var_kl-as-loss,preset=slime,is=differentiable",
       "k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight"},
      {"low_var_kl-in-reward,preset=slime", "k3-in-reward,preset=slime,clamp=value:-10:10"},
      {"0-as-loss,preset=open-instruct", "k1-as-loss,preset=open-instruct"},
      {"1-as-loss,preset=open-instruct", "k2-as-loss,preset=open-instruct"},
      {"2-as-loss,preset=open-instruct", "k3-as-loss,preset=open-instruct"},
      {"3-as-loss,preset=open-instruct", "k1-as-loss,is=differentiable,preset=open-instruct"},
      {"k3-as-loss,preset=nemo-rl", "k3-as-loss,preset=nemo-rl"},
  };
  for (const auto& [alias, klgrad_words] : cases) {
    INFO(alias);
    const auto s = parse_spec(alias);
    CHECK(s == parse_spec(klgrad_words));
    CHECK(parse_spec(to_string(s)) == s);
    if (std::string(alias) != klgrad_words)  // printed in klgrad's words, not the alias
      CHECK(to_string(s).find(alias) == std::string::npos);
  }
  // kl=NAME with the term reduced to its placement is the same name.
  CHECK(parse_spec("as-loss,preset=verl,kl=low_var_kl") == parse_spec("k3-as-loss,preset=verl"));
  CHECK(parse_spec("as-loss,kl=k3+,preset=verl") == parse_spec("k3~k2-as-loss,preset=verl"));
  CHECK(parse_spec("in-reward,preset=roll,kl=mse") == parse_spec("k2-in-reward,preset=roll"));
  CHECK(parse_spec("as-loss,preset=slime,kl=low_var_kl") ==
        parse_spec("k3-as-loss,preset=slime,clamp=value:-10:10/after-weight"));
  CHECK(to_string(parse_spec("as-loss,preset=verl,kl=mse")) == "k2-as-loss,preset=verl");
  // Explicit keys override what a name adds.
  CHECK(parse_spec("low_var_kl-as-loss,preset=slime,clamp=none") ==
        parse_spec("k3-as-loss,preset=slime"));
  CHECK(parse_spec("3-as-loss,preset=open-instruct,is=detached") ==
        parse_spec("k1-as-loss,preset=open-instruct,is=detached"));
}

TEST_CASE("spec: a name a preset does not have names the preset and lists its names",
          "[spec][aliases][errors]") {
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(parse_spec("foo-as-loss,preset=verl"),
                    Contains("preset=verl has no estimator 'foo'") && Contains("low_var_kl/k3") &&
                        Contains("k1|k2|k3|abs"));
  CHECK_THROWS_WITH(parse_spec("low_var_kl-as-loss,preset=roll"),
                    Contains("preset=roll has no estimator 'low_var_kl'") && Contains("kl, abs, mse"));
  CHECK_THROWS_WITH(parse_spec("k3+-as-loss,preset=easyr1"),
                    Contains("preset=easyr1 has no estimator 'k3+'"));
  CHECK_THROWS_WITH(parse_spec("4-as-loss,preset=open-instruct"),
                    Contains("preset=open-instruct has no estimator '4'") &&
                        Contains("kl_estimator 0 (k1)"));
  CHECK_THROWS_WITH(parse_spec("as-loss,preset=verl,kl=foo"),
                    Contains("preset=verl has no estimator 'foo'") && Contains("low_var_kl/k3"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,preset=verl,kl=low_var_kl"),
                    Contains("the term is only its placement") && Contains("give the estimator once"));
  CHECK_THROWS_WITH(parse_spec("as-loss,kl=low_var_kl"), Contains("needs preset="));
  CHECK_THROWS_WITH(parse_spec("as-loss,preset=verl,kl=mse,kl=kl"), Contains("key 'kl' given twice"));
  // Without a preset, a trainer's name is no estimator.
  CHECK_THROWS_WITH(parse_spec("low_var_kl-as-loss"), Contains("unknown estimator 'low_var_kl'"));
  // A name still obeys what the trainer can express.
  CHECK_THROWS_WITH(parse_spec("3-in-reward,preset=open-instruct"), Contains("no KL in the reward"));
}
