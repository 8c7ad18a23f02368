// Tests of evaluate.hpp: the batch kernel against the independent reference for every spec
// combination, against finite differences of the surrogate losses, the per-sample
// identities of SPEC 3-4, edge values, bad input, masks and data-parallel shards.
#include "reference.hpp"
#include "spec_strings.hpp"

#include <klgrad/klgrad.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace klgrad;

namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A random padded batch: log-probs in [-4, 0], behaviour near the policy, a mask with
/// holes, one fully masked row, and NaN in some masked slots.
template <class T>
struct random_batch {
  rows<T> lp, lr, lb, mask;
  /// near: ref = policy + noise, so that sequence sums of log-ratios stay moderate.
  random_batch(Eigen::Index B, Eigen::Index L, unsigned seed, bool near = false)
      : lp(B, L), lr(B, L), lb(B, L), mask(B, L) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(-4.0, 0.0), du(-0.7, 0.7), m(0.0, 1.0);
    for (Eigen::Index b = 0; b < B; ++b)
      for (Eigen::Index t = 0; t < L; ++t) {
        lp(b, t) = T(u(gen));
        lr(b, t) = near ? T(double(lp(b, t)) + du(gen)) : T(u(gen));
        lb(b, t) = T(double(lp(b, t)) + du(gen));
        mask(b, t) = (b == 1 || m(gen) < 0.2) ? T(0) : T(1);
        if (mask(b, t) == T(0) && m(gen) < 0.5) lp(b, t) = std::numeric_limits<T>::quiet_NaN();
      }
  }
  std::vector<std::vector<test::token_input>> tokens() const {
    std::vector<std::vector<test::token_input>> out(std::size_t(lp.rows()));
    for (Eigen::Index b = 0; b < lp.rows(); ++b)
      for (Eigen::Index t = 0; t < lp.cols(); ++t)
        out[std::size_t(b)].push_back(
            {double(lp(b, t)), double(lr(b, t)), double(lb(b, t)), mask(b, t) != T(0)});
    return out;
  }
};

template <class T>
void check_against_reference(const std::string& text, const random_batch<T>& data) {
  const spec s = parse_spec(text);
  rows<T> value(data.lp.rows(), data.lp.cols()), coef(data.lp.rows(), data.lp.cols());
  const summary r = evaluate(s, padded(data.lp, data.lr, data.mask).with_behavior(data.lb), value, coef);
  // The reference has no finiteness guard; the data keep every log-ratio inside it.
  REQUIRE(r.guarded == 0);
  const auto ref = test::reference(s, data.tokens());
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  double scale = 1e-300;
  for (const auto& row : ref.coef)
    for (double c : row) scale = std::max(scale, std::abs(c));
  INFO(text);
  for (Eigen::Index b = 0; b < value.rows(); ++b)
    for (Eigen::Index t = 0; t < value.cols(); ++t) {
      INFO("token (" << b << ", " << t << ")");
      const double rv = ref.value[std::size_t(b)][std::size_t(t)], rc = ref.coef[std::size_t(b)][std::size_t(t)];
      REQUIRE(std::abs(double(value(b, t)) - rv) <= tol * std::max(1.0, std::abs(rv)));
      REQUIRE(std::abs(double(coef(b, t)) - rc) <= tol * scale);
    }
  CHECK(r.loss == Approx(ref.loss).epsilon(tol).margin(tol));
}

}  // namespace

TEMPLATE_TEST_CASE("evaluate: every spec of the grammar agrees with the plain reference",
                   "[evaluate]", float, double) {
  const random_batch<TestType> data(5, 37, 7);
  const auto specs = test::all_spec_strings();
  CHECK(specs.size() > 10000);
  for (const auto& text : specs) check_against_reference<TestType>(text, data);
}

TEMPLATE_TEST_CASE("evaluate: long rows cross chunk boundaries", "[evaluate]", float, double) {
  const random_batch<TestType> data(3, 1000, 11, true);
  for (const char* text : {"k3-as-loss", "k1-in-reward,level=to-go,gamma=0.95",
                           "k3~k2-both,is=differentiable,is-clip=1.5,level=sequence",
                           "k2-as-loss,is=detached,agg=seq-mean-token-mean"})
    check_against_reference<TestType>(text, data);
}

TEMPLATE_TEST_CASE("evaluate: a packed batch gives the padded batch's results", "[evaluate]",
                   float, double) {
  using T = TestType;
  const random_batch<T> data(4, 9, 3);
  // Pack the rows back to back, keeping the mask so that holes stay holes.
  Eigen::Array<T, Eigen::Dynamic, 1> lp(36), lr(36), lb(36), mask(36), value(36), coef(36);
  Eigen::Array<int, Eigen::Dynamic, 1> offsets(5);
  for (int b = 0; b < 4; ++b) {
    offsets(b) = 9 * b;
    for (int t = 0; t < 9; ++t) {
      lp(9 * b + t) = data.lp(b, t);
      lr(9 * b + t) = data.lr(b, t);
      lb(9 * b + t) = data.lb(b, t);
      mask(9 * b + t) = data.mask(b, t);
    }
  }
  offsets(4) = 36;
  rows<T> pv(4, 9), pc(4, 9);
  for (const char* text : {"k3-as-loss,agg=seq-mean-token-mean", "k1-in-reward,level=to-go",
                           "k2-as-loss,level=sequence,is=differentiable"}) {
    const spec s = parse_spec(text);
    const summary a = evaluate(s, packed(lp, lr, offsets, mask).with_behavior(lb), value, coef);
    const summary b = evaluate(s, padded(data.lp, data.lr, data.mask).with_behavior(data.lb), pv, pc);
    INFO(text);
    CHECK(a.loss == b.loss);
    CHECK(a.tokens == b.tokens);
    for (int i = 0; i < 36; ++i) {
      CHECK(value(i) == pv(i / 9, i % 9));
      CHECK(coef(i) == pc(i / 9, i % 9));
    }
  }
}

// The coefficient is d(surrogate)/d(lp) where the surrogate is written out here with its
// stop-gradients, and differentiated by central differences in double.
TEST_CASE("evaluate: coefficients are the derivatives of the surrogate losses", "[evaluate]") {
  std::mt19937 gen(5);
  std::uniform_real_distribution<double> u(-3.0, 0.0), du(-0.6, 0.6);
  const double h = 1e-6;
  for (const char* weights : {"", ",is=detached", ",is=differentiable", ",is=differentiable,is-clip=1.2"})
    for (const char* term : {"k1", "k2", "k3", "abs", "k3~k2", "k2~k1"})
      for (const char* place : {"in-reward", "as-loss", "both"}) {
        const spec s = parse_spec(std::string(term) + "-" + place + weights + ",agg=token-sum");
        for (int trial = 0; trial < 5; ++trial) {
          const double lp0 = u(gen), lr = u(gen), lb = lp0 + du(gen);
          const estimator ea = s.term.value_estimator, eb = s.term.gradient_estimator;
          const double s0 = lp0 - lr, k0 = klgrad::value(ea, s0);
          const bool in = s.term.where != placement::as_loss, as = s.term.where != placement::in_reward;
          auto weight = [&](double lp) {
            const double w = std::exp(lp - lb);
            return std::min(w, s.importance.clip);
          };
          // A(lp) = k_b(s) + sg(k_a(s0) - k_b(s0)): value of a, gradient of b.
          auto A = [&](double lp) { return klgrad::value(eb, lp - lr) + (k0 - klgrad::value(eb, s0)); };
          auto L = [&](double lp) {
            switch (s.importance.mode) {
              case weighting::none: return (in ? k0 * lp : 0) + (as ? A(lp) : 0);
              case weighting::detached: return weight(lp0) * ((in ? k0 * lp : 0) + (as ? A(lp) : 0));
              case weighting::differentiable: return weight(lp) * ((in ? k0 : 0) + (as ? A(lp) : 0));
            }
            return 0.0;
          };
          if (std::abs(s0) < 1e-4) continue;  // abs has a kink at 0
          const double fd = (L(lp0 + h) - L(lp0 - h)) / (2 * h);
          rows<double> lpa(1, 1), lra(1, 1), lba(1, 1), v(1, 1), c(1, 1);
          lpa << lp0;
          lra << lr;
          lba << lb;
          evaluate(s, padded(lpa, lra).with_behavior(lba), v, c);
          INFO(to_string(s) << " lp=" << lp0 << " lr=" << lr << " lb=" << lb);
          CHECK(c(0, 0) == Approx(fd).epsilon(1e-6).margin(1e-8));
        }
      }
}

TEST_CASE("evaluate: as-loss at sequence level differentiates k(S) through every token",
          "[evaluate]") {
  const random_batch<double> data(3, 6, 17);
  const double h = 1e-6;
  for (const char* text : {"k2-as-loss,level=sequence,agg=token-sum", "k3-as-loss,level=sequence,agg=token-sum"}) {
    const spec s = parse_spec(text);
    rows<double> v(3, 6), c(3, 6);
    evaluate(s, padded(data.lp, data.lr, data.mask), v, c);
    for (Eigen::Index b = 0; b < 3; ++b) {
      auto loss = [&](Eigen::Index t, double delta) {
        double S = 0;
        for (Eigen::Index u = 0; u < 6; ++u)
          if (data.mask(b, u) != 0) S += data.lp(b, u) + (u == t ? delta : 0) - data.lr(b, u);
        return klgrad::value(s.term.value_estimator, S);
      };
      for (Eigen::Index t = 0; t < 6; ++t) {
        if (data.mask(b, t) == 0) continue;
        CHECK(c(b, t) == Approx((loss(t, h) - loss(t, -h)) / (2 * h)).epsilon(1e-6));
      }
    }
  }
}

TEMPLATE_TEST_CASE("evaluate: the per-sample identities of SPEC 3-4", "[evaluate]", float, double) {
  using T = TestType;
  const random_batch<T> data(4, 50, 23);
  auto run = [&](const char* text) {
    rows<T> v(4, 50), c(4, 50);
    evaluate(parse_spec(text), padded(data.lp, data.lr, data.mask).with_behavior(data.lb), v, c);
    return c;
  };
  const T eps = std::numeric_limits<T>::epsilon();
  // k2 as loss is k1 in reward, bit for bit: both are the same s times the same scale.
  CHECK((run("k2-as-loss") == run("k1-in-reward")).all());
  CHECK((run("k2-as-loss,is=detached") == run("k1-in-reward,is=detached")).all());
  // k3 both has coefficient s: k3 + k3' = s exactly in real numbers; in floating point up
  // to the rounding of (s - k3') + k3', at most 2 ulp of |s| + |k3'|.
  const rows<T> both = run("k3-both,agg=token-sum");
  const rows<T> w_k3 = run("k3-as-loss,is=differentiable,agg=token-sum");
  const rows<T> w_k2 = run("k2-as-loss,is=detached,agg=token-sum");
  for (Eigen::Index b = 0; b < 4; ++b)
    for (Eigen::Index t = 0; t < 50; ++t) {
      if (data.mask(b, t) == 0) continue;
      const T s = data.lp(b, t) - data.lr(b, t), d = k3::derivative(s);
      CHECK(std::abs(both(b, t) - s) <= 2 * eps * (std::abs(s) + std::abs(d)));
      // w k3 differentiable equals detached w k2 per sample (DeepSeek's unbiased KL).
      const T w = std::exp(data.lp(b, t) - data.lb(b, t));
      CHECK(std::abs(w_k3(b, t) - w_k2(b, t)) <= 4 * eps * w * (std::abs(s) + std::abs(d)));
    }
}

TEMPLATE_TEST_CASE("evaluate: edge values never give NaN from finite input", "[evaluate][numerics]",
                   float, double) {
  using T = TestType;
  const T denorm = std::numeric_limits<T>::denorm_min(), eps = std::numeric_limits<T>::epsilon();
  const std::vector<T> edges = {T(0),     denorm,    -denorm,   eps,       -eps,
                                T(20),    T(-20),    T(88.7),   T(-88.7),  T(709),
                                T(-709),  std::numeric_limits<T>::max() / T(2),
                                -std::numeric_limits<T>::max() / T(2)};
  for (const char* term : {"k1", "k2", "k3", "abs", "k3~k2"})
    for (const char* place : {"in-reward", "as-loss", "both"})
      for (const char* w : {"", ",is=detached", ",is=differentiable"})
        for (const char* l : {"", ",level=sequence"}) {
          const spec s = parse_spec(std::string(term) + "-" + place + w + l + ",agg=token-sum,beta=1e30");
          for (T lp : edges)
            for (T lr : {T(0), T(-100), T(30)}) {
              rows<T> a(1, 2), r(1, 2), b(1, 2), v(1, 2), c(1, 2);
              a << lp, lp;
              r << lr, lr;
              b << T(0), lp;
              const summary out = evaluate(s, padded(a, r).with_behavior(b), v, c);
              INFO(to_string(s) << " lp=" << lp << " lr=" << lr);
              CHECK(v.allFinite());
              CHECK(c.allFinite());
              CHECK(std::isfinite(out.loss));
            }
        }
}

TEST_CASE("evaluate: fp32 k3 at lp = -100, lr = 0 stays finite and is counted as guarded",
          "[evaluate][numerics]") {
  rows<float> lp(1, 1), lr(1, 1), v(1, 1), c(1, 1);
  lp << -100.0f;
  lr << 0.0f;
  // Unguarded, exp(100) overflows float: k3 = inf, k3' = -inf.
  CHECK(std::isinf(k3::value(-100.0f)));
  const summary r = evaluate(parse_spec("k3-as-loss"), padded(lp, lr), v, c);
  CHECK(r.guarded == 1);
  const float bound = detail::exp_bound<float>();
  CHECK(v(0, 0) == k3::value(-bound));
  CHECK(c(0, 0) == k3::derivative(-bound));
  CHECK(std::isfinite(v(0, 0)));
  CHECK(std::isfinite(c(0, 0)));
}

TEMPLATE_TEST_CASE("evaluate: non-finite unmasked input is reported with position and value",
                   "[evaluate][numerics]", float, double) {
  using T = TestType;
  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                -std::numeric_limits<T>::infinity()}) {
    rows<T> lp = rows<T>::Constant(2, 3, T(-1)), lr = lp, v(2, 3), c(2, 3);
    lr(1, 2) = bad;
    const spec s = parse_spec("k3-as-loss");
    try {
      evaluate(s, padded(lp, lr), v, c);
      FAIL("no error raised");
    } catch (const input_error& e) {
      const std::string what = e.what();
      CHECK(what.find("ref at sequence 1, position 2") != std::string::npos);
      CHECK(what.find("flat token 5") != std::string::npos);
    }
    options propagate;
    propagate.nonfinite = nonfinite_policy::propagate;
    evaluate(s, padded(lp, lr), v, c, propagate);
    if (std::isnan(bad)) CHECK(std::isnan(c(1, 2)));
    CHECK(c.row(0).allFinite());
  }
  // The behaviour log-probs are checked too when a weight uses them.
  rows<T> lp = rows<T>::Constant(1, 2, T(-1)), lb = lp, v(1, 2), c(1, 2);
  lb(0, 1) = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_WITH(evaluate(parse_spec("k2-as-loss,is=detached"), padded(lp, lp).with_behavior(lb), v, c),
                    Catch::Contains("behavior at sequence 0, position 1"));
}

TEMPLATE_TEST_CASE("evaluate: masked slots never poison a result", "[evaluate]", float, double) {
  using T = TestType;
  random_batch<T> data(4, 13, 31);
  rows<T> clean_lp = data.lp, clean_lr = data.lr, clean_lb = data.lb;
  for (Eigen::Index b = 0; b < 4; ++b)
    for (Eigen::Index t = 0; t < 13; ++t)
      if (data.mask(b, t) == 0) {
        clean_lp(b, t) = clean_lr(b, t) = clean_lb(b, t) = T(0);
        data.lp(b, t) = std::numeric_limits<T>::quiet_NaN();
        data.lr(b, t) = std::numeric_limits<T>::infinity();
        data.lb(b, t) = -std::numeric_limits<T>::infinity();
      }
  for (const char* text : {"k3-as-loss", "k1-in-reward,level=to-go,gamma=0.9",
                           "k2-both,is=differentiable,level=sequence,agg=seq-mean-token-mean"}) {
    rows<T> v1(4, 13), c1(4, 13), v2(4, 13), c2(4, 13);
    const spec s = parse_spec(text);
    evaluate(s, padded(data.lp, data.lr, data.mask).with_behavior(data.lb), v1, c1);
    evaluate(s, padded(clean_lp, clean_lr, data.mask).with_behavior(clean_lb), v2, c2);
    INFO(text);
    CHECK((v1 == v2).all());
    CHECK((c1 == c2).all());
    CHECK((v1 * (1 - data.mask) == 0).all());
    CHECK((c1 * (1 - data.mask) == 0).all());
  }
}

TEMPLATE_TEST_CASE("evaluate: data-parallel shards add up to the unsharded batch", "[evaluate]",
                   float, double) {
  using T = TestType;
  const random_batch<T> data(6, 11, 41);
  for (const char* agg : {"token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                          "seq-mean-token-sum-norm,agg-norm=11", "token-sum-norm,agg-norm=11",
                          "token-mean,agg-eps=0.5,agg-scale=4",
                          "seq-mean-token-mean,agg-eps=0.5,agg-seq-eps=0.25,agg-scale=0.125",
                          "seq-mean-token-sum-norm,agg-norm=11,agg-eps=1e-8,agg-scale=3"}) {
    const spec s = parse_spec(std::string("k3-as-loss,beta=0.1,agg=") + agg);
    rows<T> v(6, 11), c(6, 11);
    const summary whole = evaluate(s, padded(data.lp, data.lr, data.mask), v, c);
    options global;
    global.counts.tokens = whole.tokens;
    global.counts.sequences = whole.sequences;
    double loss = 0;
    for (Eigen::Index first : {0, 3}) {
      const rows<T> lp = data.lp.middleRows(first, 3), lr = data.lr.middleRows(first, 3),
                    m = data.mask.middleRows(first, 3);
      rows<T> sv(3, 11), sc(3, 11);
      loss += evaluate(s, padded(lp, lr, m), sv, sc, global).loss;
      INFO(agg << " shard at " << first);
      CHECK((sc == c.middleRows(first, 3)).all());
      CHECK((sv == v.middleRows(first, 3)).all());
    }
    CHECK(loss == Approx(whole.loss).epsilon(1e-12));
  }
}

TEST_CASE("evaluate: Eigen Maps over a trainer's raw buffers, with a byte mask", "[evaluate]") {
  std::vector<float> lp = {-1.f, -2.f, -0.5f, -3.f, -1.f, -1.f};
  std::vector<float> lr = {-1.5f, -1.f, -0.5f, -2.f, -1.f, -4.f};
  std::vector<unsigned char> mask = {1, 1, 0, 1, 0, 0};
  std::vector<float> value(6), coef(6);
  using M = Eigen::Map<const rows<float>>;
  const summary r = evaluate(parse_spec("k1-in-reward,agg=token-sum"),
                             padded(M(lp.data(), 2, 3), M(lr.data(), 2, 3),
                                    Eigen::Map<const Eigen::Array<unsigned char, 2, 3, Eigen::RowMajor>>(mask.data())),
                             Eigen::Map<rows<float>>(value.data(), 2, 3),
                             Eigen::Map<rows<float>>(coef.data(), 2, 3));
  CHECK(r.tokens == 3);
  CHECK(r.sequences == 2);
  CHECK(coef == std::vector<float>{0.5f, -1.f, 0.f, -1.f, 0.f, 0.f});
  CHECK(r.loss == Approx(-1.5));
  CHECK(r.kl == Approx(-0.5));
  CHECK(r.kl_sequence == Approx(-0.75));
}

TEST_CASE("evaluate: shape and setup errors name both shapes", "[evaluate][errors]") {
  rows<double> a(2, 3), b(2, 4), v(2, 3), c(2, 3), w(3, 3);
  a.setConstant(-1);
  b.setConstant(-1);
  CHECK_THROWS_WITH(padded(a, b), Catch::Contains("logp is 2x3 but ref is 2x4"));
  CHECK_THROWS_WITH(padded(a, a, b), Catch::Contains("logp is 2x3 but mask is 2x4"));
  CHECK_THROWS_WITH(padded(a, a).with_behavior(b), Catch::Contains("logp is 2x3 but behavior is 2x4"));
  CHECK_THROWS_WITH(evaluate(parse_spec("k1-in-reward"), padded(a, a), w, c),
                    Catch::Contains("logp is 2x3 but value is 3x3"));
  CHECK_THROWS_WITH(evaluate(parse_spec("k1-in-reward"), padded(a, a), v, w),
                    Catch::Contains("logp is 2x3 but coef is 3x3"));
  Eigen::ArrayXXd col_major(2, 3);
  CHECK_THROWS_WITH(padded(col_major, col_major), Catch::Contains("column-major"));
  CHECK_THROWS_WITH(evaluate(parse_spec("k1-in-reward,is=detached"), padded(a, a), v, c),
                    Catch::Contains("no behavior log-probs"));
  options zero;
  zero.counts.tokens = 0;
  CHECK_THROWS_AS(evaluate(parse_spec("k1-in-reward"), padded(a, a), v, c, zero), input_error);
  Eigen::ArrayXd x(5), y(4);
  x.setZero();
  Eigen::ArrayXi bad(3), good(3);
  bad << 0, 3, 2;
  good << 0, 2, 4;
  CHECK_THROWS_WITH(packed(x, y, good), Catch::Contains("logp is 1x5 but ref is 1x4"));
  CHECK_THROWS_WITH(packed(x, x, bad), Catch::Contains("offsets must be non-decreasing"));
  CHECK_THROWS_WITH(packed(x, x, good), Catch::Contains("offsets end at 4 but logp has 5 tokens"));
}

TEST_CASE("evaluate: empty sequences are left out of sequence means", "[evaluate]") {
  rows<double> lp(3, 2), lr(3, 2), m(3, 2), v(3, 2), c(3, 2);
  lp << -1, -2, -1, -1, -3, -1;
  lr << -2, -2, -1, -1, -1, -1;
  m << 1, 1, 0, 0, 1, 0;
  const summary r = evaluate(parse_spec("k1-in-reward,agg=seq-mean-token-sum"), padded(lp, lr, m), v, c);
  CHECK(r.sequences == 2);
  CHECK(c(0, 0) == Approx(0.5));  // k1 = 1, a = 1/2
  CHECK(c(2, 0) == Approx(-1.0));
  CHECK(r.loss == Approx((1.0 + 0.0 - 2.0) / 2));
}

TEMPLATE_TEST_CASE("evaluate: sequence-level weights across chunk boundaries", "[evaluate]", float,
                   double) {
  using T = TestType;
  random_batch<T> data(3, 700, 13, true);
  // Behaviour close to the policy, so that prefix products over 700 tokens stay in range.
  std::mt19937 gen(3);
  std::uniform_real_distribution<double> du(-0.02, 0.02);
  for (Eigen::Index b = 0; b < 3; ++b)
    for (Eigen::Index t = 0; t < 700; ++t)
      if (data.mask(b, t) != 0) data.lb(b, t) = T(double(data.lp(b, t)) + du(gen));
  for (const char* text : {"k1-in-reward,is=detached,is-level=per-decision,gamma=0.99",
                           "k2-as-loss,is=differentiable,is-level=prefix,is-clip=1.05",
                           "k3-both,is=differentiable,is-level=sequence-mean",
                           "k3-as-loss,is=differentiable,is-level=sequence-mean,level=sequence",
                           "k3-as-loss,preset=nemo-rl", "k3~k2-as-loss,preset=verl"})
    check_against_reference<T>(text, data);
}

TEMPLATE_TEST_CASE("evaluate: per-decision weights are the gradient of prefix-weighted penalties",
                   "[evaluate]", float, double) {
  using T = TestType;
  const random_batch<T> data(4, 30, 29);
  rows<T> v1(4, 30), c1(4, 30), v2(4, 30), c2(4, 30);
  const auto batch = padded(data.lp, data.lr, data.mask).with_behavior(data.lb);
  evaluate(parse_spec("k1-in-reward,is=detached,is-level=per-decision"), batch, v1, c1);
  evaluate(parse_spec("k1-in-reward,is=differentiable,is-level=prefix"), batch, v2, c2);
  CHECK((v1 == v2).all());
  const T tol = std::is_same_v<T, float> ? T(1e-5) : T(1e-13);
  CHECK(((c1 - c2).abs() <= tol * (T(1) + c1.abs())).all());
  // Token level with behaviour = policy: every weight is 1 and per-decision is the
  // undiscounted reward-to-go.
  rows<T> v3(4, 30), c3(4, 30);
  evaluate(parse_spec("k1-in-reward,is=detached,is-level=per-decision,gamma=0.9"),
           padded(data.lp, data.lr, data.mask).with_behavior(data.lp), v1, c1);
  evaluate(parse_spec("k1-in-reward,level=to-go,gamma=0.9"), padded(data.lp, data.lr, data.mask),
           v3, c3);
  CHECK(((c1 - c3).abs() <= tol * (T(1) + c3.abs())).all());
}

TEST_CASE("evaluate: differentiable prefix and sequence-mean weights by finite differences",
          "[evaluate]") {
  const random_batch<double> data(3, 7, 19);
  const double h = 1e-6;
  for (const char* text : {"k3-both,is=differentiable,is-level=prefix,agg=token-sum",
                           "k2-as-loss,is=differentiable,is-level=sequence-mean,agg=token-sum",
                           "k1-in-reward,is=differentiable,is-level=sequence-mean,agg=token-sum"}) {
    const spec s = parse_spec(text);
    rows<double> v(3, 7), c(3, 7);
    evaluate(s, padded(data.lp, data.lr, data.mask).with_behavior(data.lb), v, c);
    const bool in = s.term.where != placement::as_loss, as = s.term.where != placement::in_reward;
    for (Eigen::Index b = 0; b < 3; ++b) {
      // The surrogate sum_t u_t(lp) ([in] sg(k(s_t)) + [as] k(s_t)), u by is-level.
      auto loss = [&](Eigen::Index j, double delta) {
        double total = 0, prefix = 0, mean = 0;
        int n = 0;
        for (Eigen::Index t = 0; t < 7; ++t)
          if (data.mask(b, t) != 0) {
            mean += data.lp(b, t) + (t == j ? delta : 0) - data.lb(b, t);
            ++n;
          }
        mean /= n;
        for (Eigen::Index t = 0; t < 7; ++t) {
          if (data.mask(b, t) == 0) continue;
          const double lp = data.lp(b, t) + (t == j ? delta : 0);
          prefix += lp - data.lb(b, t);
          const double u = std::exp(s.importance.level == weight_level::prefix ? prefix : mean);
          const double k0 = klgrad::value(s.term.value_estimator, data.lp(b, t) - data.lr(b, t));
          total += u * ((in ? k0 : 0) + (as ? klgrad::value(s.term.value_estimator, lp - data.lr(b, t)) : 0));
        }
        return total;
      };
      for (Eigen::Index t = 0; t < 7; ++t) {
        if (data.mask(b, t) == 0) continue;
        INFO(text << " token (" << b << ", " << t << ")");
        CHECK(c(b, t) == Approx((loss(t, h) - loss(t, -h)) / (2 * h)).epsilon(1e-6).margin(1e-9));
      }
    }
  }
}
