// Tests of evaluate() at the edges a trainer really reaches (issue 13): a batch with no valid
// token, clamp bands that exclude 0, extreme spec constants with finite input, and global
// counts, each over every swept spec, padded and packed, in float and double.
#include "spec_strings.hpp"

#include <klgrad/klgrad.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace klgrad;
using Catch::Contains;

namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using column = Eigen::Array<T, Eigen::Dynamic, 1>;

/// Every spec the tests sweep (tests/spec_strings.hpp) and every term under every preset
/// that accepts it, with the aggregations and weights the presets' trainers use.
const std::vector<std::string>& swept_specs() {
  static const std::vector<std::string> out = [] {
    std::vector<std::string> all = test::all_spec_strings();
    for (const char* term : {"k1", "k2", "k3", "abs", "k3~k2", "k1~k2"})
      for (const char* place : {"-in-reward", "-as-loss", "-both"})
        for (preset p : all_presets)
          for (const char* extra : {"", ",agg=token-sum", ",agg=seq-mean-token-sum",
                                    ",agg=seq-mean-token-mean", ",is=differentiable",
                                    ",is=differentiable,is-level=sequence-mean"}) {
            const std::string text = std::string(term) + place + ",preset=" +
                                     std::string(to_string(p)) + extra + ",beta=0.04";
            try {
              parse_spec(text);
              all.push_back(text);
            } catch (const spec_error&) {
            }
          }
    return all;
  }();
  return out;
}

bool all_zero(const summary& r) {
  return r.loss == 0 && r.kl == 0 && r.kl_sequence == 0 && r.tokens == 0 && r.sequences == 0 &&
         r.guarded == 0 && r.dropped == 0;
}

bool finite(const summary& r) {
  return std::isfinite(r.loss) && std::isfinite(r.kl) && std::isfinite(r.kl_sequence);
}

}  // namespace

// Expected: exactly 0 everywhere (no valid token contributes anything, SPEC's loss is an
// empty sum). Before the fix token-mean divided beta by N_tokens = 0 and multiplied the
// resulting inf by the masked tokens' 0.
TEMPLATE_TEST_CASE("evaluate edges: a batch with no valid token gives zeros for every spec",
                   "[evaluate][numerics][edges]", float, double) {
  using T = TestType;
  // Padding holds finite log-probs with a nonzero log-ratio, as a trainer's buffers do.
  rows<T> lp = rows<T>::Constant(3, 5, T(-1)), lr = rows<T>::Constant(3, 5, T(-2.5)),
          lb = rows<T>::Constant(3, 5, T(-1.5)), mask = rows<T>::Zero(3, 5);
  column<T> plp = column<T>::Constant(7, T(-1)), plr = column<T>::Constant(7, T(-2.5)),
            plb = column<T>::Constant(7, T(-1.5)), pmask = column<T>::Zero(7);
  Eigen::Array<int, Eigen::Dynamic, 1> offsets(4);
  offsets << 0, 3, 3, 7;
  const rows<T> none(0, 5);          // an empty micro-batch: no sequences
  const column<T> no_tokens(0);      // packed, no tokens
  Eigen::Array<int, Eigen::Dynamic, 1> empty_offsets(3);
  empty_offsets << 0, 0, 0;          // two empty sequences
  options shard;                     // a data-parallel shard of padding
  shard.counts.tokens = 12;
  shard.counts.sequences = 4;
  Eigen::Index checked = 0;
  for (const std::string& text : swept_specs()) {
    const spec s = parse_spec(text);
    INFO(text);
    for (const options& opt : {options{}, shard}) {
      rows<T> v = rows<T>::Constant(3, 5, T(7)), c = v;
      const summary r = evaluate(s, padded(lp, lr, mask).with_behavior(lb), v, c, opt);
      REQUIRE((v == 0).all());
      REQUIRE((c == 0).all());
      REQUIRE(all_zero(r));
      column<T> pv = column<T>::Constant(7, T(7)), pc = pv;
      const summary q = evaluate(s, packed(plp, plr, offsets, pmask).with_behavior(plb), pv, pc, opt);
      REQUIRE((pv == 0).all());
      REQUIRE((pc == 0).all());
      REQUIRE(all_zero(q));
    }
    rows<T> nv(0, 5), nc(0, 5);
    REQUIRE(all_zero(evaluate(s, padded(none, none).with_behavior(none), nv, nc)));
    column<T> ev(0), ec(0);
    REQUIRE(all_zero(evaluate(s, packed(no_tokens, no_tokens, empty_offsets).with_behavior(no_tokens),
                              ev, ec)));
    ++checked;
  }
  CHECK(checked > 1000);
}

TEST_CASE("evaluate edges: preset=trl on an all-padding micro-batch gives zero coefficients",
          "[evaluate][numerics][edges]") {
  // The case, on its own: TRL's k3 loss, token-mean over N_tokens = 0.
  rows<float> lp = rows<float>::Constant(2, 4, -1.f), lr = rows<float>::Constant(2, 4, -3.f),
              mask = rows<float>::Zero(2, 4), v(2, 4), c(2, 4);
  const summary r = evaluate(parse_spec("k3-as-loss,preset=trl,beta=0.04"), padded(lp, lr, mask), v, c);
  CHECK((c == 0).all());
  CHECK((v == 0).all());
  CHECK(r.loss == 0);
  CHECK(r.kl == 0);
  CHECK(r.kl_sequence == 0);
}

TEST_CASE("evaluate edges: the aggregation weight of a batch without valid tokens is 0",
          "[evaluate][numerics][edges]") {
  // a_{b,t} = 0 where the count the mode divides by is 0, whatever the epsilons.
  const aggregation_constants plain, eps{0.0, 1e-8, 1e-8, 1.0}, norm{4.0, 0.0, 0.0, 1.0};
  CHECK(aggregation_weight(aggregation::token_mean, plain, 0, 0, 0) == 0);
  CHECK(aggregation_weight(aggregation::token_mean, eps, 0, 0, 0) == 0);
  CHECK(aggregation_weight(aggregation::seq_mean_token_sum, plain, 0, 0, 0) == 0);
  CHECK(aggregation_weight(aggregation::seq_mean_token_mean, eps, 0, 0, 0) == 0);
  CHECK(aggregation_weight(aggregation::seq_mean_token_mean, plain, 0, 5, 2) == 0);
  CHECK(aggregation_weight(aggregation::seq_mean_token_sum_norm, norm, 0, 0, 0) == 0);
  // Modes that divide by no count keep their constant weight.
  CHECK(aggregation_weight(aggregation::token_sum, plain, 0, 0, 0) == 1);
  CHECK(aggregation_weight(aggregation::token_sum_norm, norm, 0, 0, 0) == 0.25);
  // And a nonempty batch is unchanged: 1 / N_tokens.
  CHECK(aggregation_weight(aggregation::token_mean, plain, 3, 4, 2) == 0.25);
}

// ---- clamp bands ----

TEST_CASE("evaluate edges: a clamp band that excludes 0 is refused with the reason",
          "[spec][numerics][edges][errors]") {
  // Every estimator is 0 at s = 0 (pi = ref): a band without 0 penalises or rewards the
  // on-policy point, and would hand masked positions its bound.
  for (const char* band : {"value:1:2", "log-ratio:-1000:-900", "value:-inf:-0.5",
                           "log-ratio:0.25:inf", "log-ratio:-2:-1/value:-1:1",
                           "log-ratio:-1:1/value:0.5:1/after-weight"}) {
    const std::string text = std::string("k3-as-loss,is=differentiable,clamp=") + band;
    INFO(text);
    CHECK_THROWS_AS(parse_spec(text), spec_error);
    CHECK_THROWS_WITH(parse_spec(text), Contains("excludes 0"));
    CHECK_THROWS_WITH(parse_spec(text), Contains("s = 0 (pi = ref)"));
  }
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=value:1:2"), Contains("value band [1, 2]"));
  CHECK_THROWS_WITH(parse_spec("k3-as-loss,clamp=log-ratio:-1000:-900"),
                    Contains("log-ratio band [-1000, -900]"));
  // Bands that reach 0 are fine.
  for (const char* band : {"value:0:10", "value:-inf:0", "log-ratio:0:inf", "log-ratio:-5:0"})
    CHECK_NOTHROW(parse_spec(std::string("k2-as-loss,clamp=") + band));
}

TEST_CASE("evaluate edges: every trainer preset's clamp still parses",
          "[spec][presets][edges]") {
  // The refusal must not reject a real trainer's clamp: every term a preset accepts, with
  // the preset and with its clamp alone.
  Eigen::Index accepted = 0;
  for (preset p : all_presets)
    for (estimator e : all_estimators)
      for (placement w : all_placements) {
        term t;
        t.value_estimator = t.gradient_estimator = e;
        t.where = w;
        if (!preset_mismatch(p, t).empty()) continue;
        const std::string head = std::string(to_string(e)) + "-" + std::string(to_string(w));
        INFO(head << " preset " << to_string(p));
        CHECK_NOTHROW(parse_spec(head + ",preset=" + std::string(to_string(p))));
        CHECK_NOTHROW(parse_spec(head + ",clamp=" + std::string(to_string(p))));
        const clamp_policy c = conventions(p, t).clamp;
        CHECK((c.log_lo <= 0 && 0 <= c.log_hi && c.value_lo <= 0 && 0 <= c.value_hi));
        ++accepted;
      }
  CHECK(accepted > 20);
}

TEST_CASE("evaluate edges: a hand-built spec with a band excluding 0 is refused by evaluate",
          "[evaluate][numerics][edges][errors]") {
  // A spec assembled in C++ skips parse_spec: evaluate() checks the band itself (before the
  // fix it returned k3(-900) = inf and coefficient -inf - ... = NaN, with guarded = 0).
  rows<double> lp = rows<double>::Constant(1, 3, -1.0), lr = rows<double>::Constant(1, 3, -1.5),
               mask(1, 3), v(1, 3), c(1, 3);
  mask << 1, 0, 1;
  spec s = parse_spec("k3-as-loss");
  s.clamp.log_lo = -1000;
  s.clamp.log_hi = -900;
  CHECK_THROWS_WITH(evaluate(s, padded(lp, lr, mask), v, c), Contains("log-ratio band [-1000, -900]"));
  s = parse_spec("k1-in-reward");
  s.clamp.value_lo = 1;
  s.clamp.value_hi = 2;
  CHECK_THROWS_WITH(evaluate(s, padded(lp, lr, mask), v, c), Contains("value band [1, 2]"));
}

// Closed forms: the clamp acts on s first, the guard only where the clamp leaves s outside
// the range in which the estimator stays finite (docs/numerics.md).
TEST_CASE("evaluate edges: accepted clamps keep the guard and count it", "[evaluate][numerics][edges]") {
  rows<float> lp(1, 1), lr(1, 1), v(1, 1), c(1, 1);
  const float bound = detail::exp_bound<float>();
  auto run = [&](const char* text, float a, float b) {
    lp << a;
    lr << b;
    return evaluate(parse_spec(text), padded(lp, lr), v, c, options{});
  };
  // The clamp bounds s to [-20, 20] before any exp: no guard needed, gradient 0 outside.
  summary r = run("k3-as-loss,clamp=log-ratio:-20:20,agg=token-sum", -100.f, 0.f);
  CHECK(r.guarded == 0);
  CHECK(v(0, 0) == k3::value(-20.f));
  CHECK(c(0, 0) == 0.f);
  // A band wider than the guard's range: the guard clamps (and counts), the clamp lets the
  // gradient through.
  r = run("k3-as-loss,clamp=log-ratio:-1000:1000,agg=token-sum", -100.f, 0.f);
  CHECK(r.guarded == 1);
  CHECK(v(0, 0) == k3::value(-bound));
  CHECK(c(0, 0) == k3::derivative(-bound));
  // A value band only: the guard keeps k3 finite, the value clamp caps it, gradient 0.
  r = run("k3-as-loss,clamp=value:-10:10,agg=token-sum", -100.f, 0.f);
  CHECK(r.guarded == 1);
  CHECK(v(0, 0) == 10.f);
  CHECK(c(0, 0) == 0.f);
  // A one-sided band: above, the band holds s at 0 (no guard); below, the guard holds it.
  const float huge = std::numeric_limits<float>::max() / 2;
  r = run("k2-as-loss,clamp=log-ratio:-inf:0,agg=token-sum", 0.f, -huge);
  CHECK(r.guarded == 0);
  CHECK(v(0, 0) == 0.f);
  CHECK(c(0, 0) == 0.f);
  r = run("k2-as-loss,clamp=log-ratio:-inf:0,agg=token-sum", -huge, 0.f);
  const float low = k2::lowest_safe<float>();
  CHECK(r.guarded == 1);
  CHECK(v(0, 0) == k2::value(low));
  CHECK(c(0, 0) == low);
  CHECK(std::isfinite(v(0, 0)));
}

TEMPLATE_TEST_CASE("evaluate edges: accepted clamps with extreme finite input stay finite",
                   "[evaluate][numerics][edges]", float, double) {
  using T = TestType;
  const T top = std::numeric_limits<T>::max();
  const std::vector<T> edges = {T(0), T(-20), T(-100), T(-1000), -top / 2, -top};
  const Eigen::Index n = Eigen::Index(edges.size() * edges.size());
  rows<T> lp(2, n), lr(2, n), lb(2, n), mask = rows<T>::Ones(2, n), v(2, n), c(2, n);
  for (std::size_t i = 0; i < edges.size(); ++i)
    for (std::size_t j = 0; j < edges.size(); ++j) {
      const Eigen::Index k = Eigen::Index(i * edges.size() + j);
      lp(0, k) = edges[i];
      lr(0, k) = edges[j];
      lb(0, k) = edges[(i + 1) % edges.size()];
      lp(1, k) = edges[j];
      lr(1, k) = edges[i];
      lb(1, k) = edges[i];
      mask(1, k) = T(k % 3 != 0);
    }
  Eigen::Index checked = 0;
  for (const char* clamp : {"log-ratio:-20:20", "log-ratio:-1000:1000", "log-ratio:-inf:0",
                            "log-ratio:0:inf", "value:-10:10", "value:0:inf",
                            "log-ratio:-1e300:1e300/value:-1e300:1e300/pass-gradient",
                            "log-ratio:-20:20/value:-10:10/est:k3",
                            "log-ratio:-20:20/value:-10:10/after-weight/detach-weight"})
    for (const std::string& head : swept_specs()) {
      if (head.find("clamp=") != std::string::npos) continue;
      spec s = parse_spec(head);
      try {
        s = parse_spec(head.substr(0, head.find(",beta")) + ",clamp=" + clamp + ",beta=1e30");
      } catch (const spec_error&) {
        continue;  // a combination the grammar refuses (after-weight needs as-loss, ...)
      }
      const summary r = evaluate(s, padded(lp, lr, mask).with_behavior(lb), v, c);
      INFO(to_string(s));
      REQUIRE(v.allFinite());
      REQUIRE(c.allFinite());
      REQUIRE(finite(r));
      ++checked;
    }
  CHECK(checked > 1000);
}

TEST_CASE("evaluate edges: a sequence sum of extreme log-ratios under a clamp is not NaN",
          "[evaluate][numerics][edges]") {
  // clamp=log-ratio:-20:20 lifts the guard (the clamp bounds s itself), so the sequence sum
  // S = sum s_t sees s_t = +-max: alternating signs, whose vector partial sums overflow to
  // +inf and -inf. The exact S is 0: k3(0) = 0, k3'(0) = 0.
  const double top = std::numeric_limits<double>::max();
  rows<double> lp(1, 32), lr(1, 32), v(1, 32), c(1, 32);
  for (Eigen::Index t = 0; t < 32; ++t) {
    lp(0, t) = t % 2 ? -top : 0.0;
    lr(0, t) = t % 2 ? 0.0 : -top;
  }
  const summary r =
      evaluate(parse_spec("k3-as-loss,level=sequence,clamp=log-ratio:-20:20"), padded(lp, lr), v, c);
  CHECK(c.allFinite());
  CHECK(v.allFinite());
  CHECK((c == 0).all());
  CHECK((v == 0).all());
  CHECK(finite(r));
}

// ---- extreme constants ----

TEMPLATE_TEST_CASE("evaluate edges: extreme spec constants never give NaN from finite input",
                   "[evaluate][numerics][edges]", float, double) {
  using T = TestType;
  const T top = std::numeric_limits<T>::max();
  // Row 0 ordinary, row 1 extreme, row 2 padding; and a batch of padding alone.
  const double big = double(top) / 2;
  const rows<double> lp_d = (rows<double>(3, 6) << -1.2, -0.7, -2.1, -0.9, -1.5, -3.0,  //
                             -1000, 0, -big, 0, -100, -1e-30,                          //
                             -1, -1, -1, -1, -1, -1).finished();
  const rows<double> lr_d = (rows<double>(3, 6) << -1.0, -0.9, -1.8, -1.1, -1.4, -0.2,  //
                             0, -1000, 0, -big, 0, 0,                                  //
                             -2, -2, -2, -2, -2, -2).finished();
  const rows<double> lb_d = (rows<double>(3, 6) << -1.1, -0.8, -2.0, -1.0, -1.6, -2.5,  //
                             0, -1000, -big, 0, -50, -1e-30,                           //
                             -1, -1, -1, -1, -1, -1).finished();
  const rows<T> lp = lp_d.cast<T>(), lr = lr_d.cast<T>(), lb = lb_d.cast<T>();
  rows<T> mask(3, 6);
  mask << 1, 1, 1, 0, 1, 1,  //
      1, 1, 1, 1, 1, 1,      //
      0, 0, 0, 0, 0, 0;
  const rows<T> padding = rows<T>::Zero(3, 6);
  struct constants {
    double beta, scale, norm, eps;
  };
  const constants sets[] = {{1e308, 1, 1, 0},     {1e38, 1e308, 1, 0},   {1e10, 1, 1e-300, 0},
                            {1e300, 1e300, 1, 1e-300}, {0, 1e308, 1e-300, 1e-300},
                            {1e308, 1e-300, 1e308, 1e308}};
  Eigen::Index checked = 0;
  for (const std::string& text : swept_specs())
    for (const constants& k : sets) {
      spec s = parse_spec(text);
      s.beta = k.beta;
      s.aggregation_constants.scale = k.scale;
      if (uses_norm(s.aggregation)) s.aggregation_constants.norm = k.norm;
      if (uses_batch_count(s.aggregation)) s.aggregation_constants.eps = k.eps;
      if (uses_sequence_count(s.aggregation)) s.aggregation_constants.seq_eps = k.eps;
      try {  // only specs the parser accepts carry the promise
        if (parse_spec(to_string(s)) != s) continue;
      } catch (const spec_error&) {
        continue;
      }
      INFO(to_string(s));
      rows<T> v(3, 6), c(3, 6);
      const summary r = evaluate(s, padded(lp, lr, mask).with_behavior(lb), v, c);
      REQUIRE(v.allFinite());
      REQUIRE(c.allFinite());
      REQUIRE(finite(r));
      const summary e = evaluate(s, padded(lp, lr, padding).with_behavior(lb), v, c);
      REQUIRE((v == 0).all());
      REQUIRE((c == 0).all());
      REQUIRE(all_zero(e));
      ++checked;
    }
  CHECK(checked > 1000);
}

TEMPLATE_TEST_CASE("evaluate edges: a huge scale saturates the coefficient at the largest finite value",
                   "[evaluate][numerics][edges]", float, double) {
  using T = TestType;
  const T top = std::numeric_limits<T>::max();
  rows<T> lp(1, 3), lr(1, 3), v(1, 3), c(1, 3);
  lp << T(-1), T(-2), T(-1);
  lr << T(-2), T(-1), T(-1);
  // k1 in the reward: coef = beta * s with s = 1, -1, 0: saturated, its sign kept, and 0
  // stays 0 (before, inf * 0 = NaN for the float type).
  const summary r = evaluate(parse_spec("k1-in-reward,agg=token-sum,beta=1e308,agg-scale=1e308"),
                             padded(lp, lr), v, c);
  CHECK(c(0, 0) == top);
  CHECK(c(0, 1) == -top);
  CHECK(c(0, 2) == 0);
  CHECK(std::isfinite(r.loss));
}

// ---- global counts ----

TEMPLATE_TEST_CASE("evaluate edges: global counts must be -1 or at least the local counts",
                   "[evaluate][edges][errors]", float, double) {
  using T = TestType;
  rows<T> lp(2, 3), lr(2, 3), mask(2, 3), v(2, 3), c(2, 3);
  lp << -1, -2, -1, -1, -3, -1;
  lr << -2, -1, -1, -1, -1, -2;
  mask << 1, 1, 0, 1, 1, 1;  // 5 valid tokens in 2 sequences
  const auto batch = padded(lp, lr, mask);
  const spec mean = parse_spec("k3-as-loss"), seq = parse_spec("k3-as-loss,agg=seq-mean-token-sum");
  auto with = [](Eigen::Index tokens, Eigen::Index sequences) {
    options o;
    o.counts.tokens = tokens;
    o.counts.sequences = sequences;
    return o;
  };
  // Smaller than the batch's own: the coefficients would grow by local / global.
  CHECK_THROWS_AS(evaluate(mean, batch, v, c, with(3, -1)), input_error);
  CHECK_THROWS_WITH(evaluate(mean, batch, v, c, with(3, -1)),
                    Contains("batch_counts.tokens = 3") && Contains("5 valid tokens"));
  CHECK_THROWS_WITH(evaluate(seq, batch, v, c, with(-1, 1)),
                    Contains("batch_counts.sequences = 1") && Contains("2 non-empty sequences"));
  // Negative counts other than -1 no longer fall back to the local count silently.
  CHECK_THROWS_WITH(evaluate(mean, batch, v, c, with(-2, -1)), Contains("batch_counts.tokens = -2"));
  CHECK_THROWS_WITH(evaluate(seq, batch, v, c, with(-1, -7)), Contains("batch_counts.sequences = -7"));
  // A count a mode does not divide by is still checked: it is a claim about the batch.
  CHECK_THROWS_WITH(evaluate(mean, batch, v, c, with(-1, 1)), Contains("batch_counts.sequences = 1"));
  CHECK_THROWS_WITH(evaluate(mean, batch, v, c, with(0, -1)), Contains("batch_counts.tokens = 0"));
  // -1, the local counts themselves and larger ones are fine.
  rows<T> v0(2, 3), c0(2, 3), c1(2, 3);
  const summary local = evaluate(mean, batch, v0, c0);
  const summary same = evaluate(mean, batch, v, c1, with(5, 2));
  CHECK((c1 == c0).all());
  CHECK(same.loss == local.loss);
  evaluate(mean, batch, v, c1, with(10, 4));
  for (Eigen::Index i = 0; i < 6; ++i) CHECK(c1(i / 3, i % 3) == T(c0(i / 3, i % 3) / T(2)));
  // A global count of 0 is fine for a batch with no valid token (the whole step is empty).
  const rows<T> padding = rows<T>::Zero(2, 3);
  const summary empty = evaluate(mean, padded(lp, lr, padding), v, c, with(0, 0));
  CHECK((c == 0).all());
  CHECK(all_zero(empty));
  // Packed batches are checked the same way.
  column<T> plp(4), plr(4);
  plp << -1, -2, -1, -1;
  plr << -2, -1, -1, -1;
  Eigen::Array<int, Eigen::Dynamic, 1> offsets(3);
  offsets << 0, 1, 4;
  column<T> pv(4), pc(4);
  CHECK_THROWS_WITH(evaluate(seq, packed(plp, plr, offsets), pv, pc, with(-1, 1)),
                    Contains("batch_counts.sequences = 1"));
}

TEST_CASE("evaluate edges: logits_options counts are checked like evaluate's",
          "[logits][edges][errors]") {
  rows<double> z(4, 3), zr(4, 3), mask(2, 2), value(2, 2), grad(4, 3);
  z << 0.1, 0.2, 0.3, -0.5, 0.0, 0.5, 1.0, 0.0, -1.0, 0.3, 0.3, 0.3;
  zr = z * 0.5;
  mask << 1, 1, 1, 0;  // 3 valid rows in 2 sequences
  logits_options opt;
  opt.counts.tokens = 2;
  CHECK_THROWS_WITH(logits_divergence(divergence::forward_kl, logit_rows(z, zr, mask), value, grad, opt),
                    Contains("batch_counts.tokens = 2") && Contains("3 valid tokens"));
  opt.counts.tokens = -3;
  CHECK_THROWS_WITH(logits_divergence(divergence::forward_kl, logit_rows(z, zr, mask), value, grad, opt),
                    Contains("batch_counts.tokens = -3"));
  opt.counts.tokens = -1;
  opt.counts.sequences = 1;
  CHECK_THROWS_WITH(logits_divergence(divergence::forward_kl, logit_rows(z, zr, mask), value, grad, opt),
                    Contains("batch_counts.sequences = 1"));
  // 0 with no valid row: zeros.
  const rows<double> none = rows<double>::Zero(2, 2);
  opt.counts.tokens = 0;
  opt.counts.sequences = 0;
  const logits_summary s =
      logits_divergence(divergence::forward_kl, logit_rows(z, zr, none), value, grad, opt);
  CHECK(s.loss == 0);
  CHECK((grad == 0).all());
}

TEST_CASE("evaluate edges: a huge beta saturates the logits gradient's scale and never gives NaN",
          "[logits][edges]") {
  // Entry 2's probability underflows in float (logit -200 against 0), so its gradient
  // factor p * (...) is exactly 0: with beta = 1e308 the unsaturated float scale is inf and
  // inf * 0 is NaN. Every divergence, temperatures below and above 1.
  rows<float> z(2, 3), zr(2, 3), value(2, 1), grad(2, 3);
  z << 0.f, 1.f, -200.f, 0.5f, -0.5f, 0.f;
  zr << 1.f, 0.f, 0.f, 0.f, 0.f, 0.f;
  for (const divergence d : {divergence::reverse_kl, divergence::forward_kl,
                             divergence::jensen_shannon})
    for (const double temperature : {0.5, 1.0, 2.0}) {
      logits_options opt;
      opt.beta = 1e308;
      opt.aggregation = aggregation::token_sum;
      opt.temperature = temperature;
      logits_divergence(d, logit_rows(z, zr), value, grad, opt);
      INFO("divergence " << int(d) << ", temperature " << temperature);
      CHECK(!grad.isNaN().any());
      CHECK(!value.isNaN().any());
    }
}
