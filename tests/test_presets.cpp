// Tests of presets.hpp: each trainer preset against the trainer's formula written out here
// in closed form (from docs/presets.md), at ordinary points and at every clamp edge
// (exactly at, just inside, just outside), in float and double; and the fp32 overflow case
// lp = -100, lr = 0, where klgrad stays finite and counts the token as guarded.
#include <klgrad/klgrad.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace klgrad;

namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct expected {
  double value, coef;
};

double clampd(double x, double lo, double hi) { return std::min(std::max(x, lo), hi); }
double k3f(double s) { return std::expm1(-s) + s; }
double k3d(double s) { return -std::expm1(-s); }

/// One preset case: a spec, whether it uses a weight (lb = lp - 0.1), and its closed form
/// (value, coefficient) as a function of s = lp - lr and w = exp(lp - lb).
struct preset_case {
  const char* spec;
  bool weighted;
  std::function<expected(double s, double w)> formula;
};

// low_var_kl of verl / EasyR1: xc = clamp(-s, -20, 20), k = clamp(exp(xc) - xc - 1, -10, 10);
// gradient 1 - exp(-s) where neither clamp is active.
expected low_var_kl(double s) {
  const double sc = clampd(s, -20, 20), k = k3f(sc);
  const bool pass = std::abs(s) <= 20 && k <= 10;
  return {clampd(k, -10, 10), pass ? k3d(sc) : 0.0};
}

std::vector<preset_case> cases() {
  return {
      {"k3-as-loss,preset=verl", false, [](double s, double) { return low_var_kl(s); }},
      {"k3-as-loss,preset=easyr1", false, [](double s, double) { return low_var_kl(s); }},
      // k3+: sg(k3 clamped) + k2 - sg(k2): value of low_var_kl, unclamped k2 gradient s.
      {"k3~k2-as-loss,preset=verl", false,
       [](double s, double) { return expected{low_var_kl(s).value, s}; }},
      {"k1-in-reward,preset=verl", false, [](double s, double) { return expected{s, s}; }},
      {"k2-as-loss,preset=verl", false, [](double s, double) { return expected{s * s / 2, s}; }},
      // OpenRLHF: every estimator's value clamped to +-10, no log-ratio clamp.
      {"k1-as-loss,preset=openrlhf", false,
       [](double s, double) { return expected{clampd(s, -10, 10), std::abs(s) <= 10 ? 1.0 : 0.0}; }},
      {"k2-as-loss,preset=openrlhf", false,
       [](double s, double) {
         const double k = s * s / 2;
         return expected{clampd(k, -10, 10), k <= 10 ? s : 0.0};
       }},
      {"k3-as-loss,preset=openrlhf", false,
       [](double s, double) {
         const double k = k3f(s);
         return expected{clampd(k, -10, 10), k <= 10 ? k3d(s) : 0.0};
       }},
      {"k1-in-reward,preset=openrlhf", false,
       [](double s, double) { const double k = clampd(s, -10, 10); return expected{k, k}; }},
      // NeMo-RL: xc = clamp(x, -20, 20) (weight detached where active), kl = w k(xc),
      // clamp(kl, -10, 10). Gradient d(w k)/dlp = w' k + w k' where nothing is clamped.
      {"k3-as-loss,preset=nemo-rl", true,
       [](double s, double w) {
         const double sc = clampd(s, -20, 20);
         const bool inside = std::abs(s) <= 20;
         const double kl = w * k3f(sc);
         const bool band = kl >= -10 && kl <= 10;
         return expected{clampd(kl, -10, 10),
                         band ? (inside ? w : 0.0) * k3f(sc) + (inside ? w * k3d(sc) : 0.0) : 0.0};
       }},
      {"k1-as-loss,preset=nemo-rl", true,
       [](double s, double w) {
         const double sc = clampd(s, -20, 20);
         const bool inside = std::abs(s) <= 20;
         const double kl = w * sc;
         const bool band = kl >= -10 && kl <= 10;
         return expected{clampd(kl, -10, 10), band ? (inside ? w * (1 + sc) : 0.0) : 0.0};
       }},
      {"k2-in-reward,preset=nemo-rl", false,
       [](double s, double) {
         const double k = clampd(clampd(s, -20, 20) * clampd(s, -20, 20) / 2, -10, 10);
         return expected{k, k};
       }},
      // TRL: unclamped k3; use_bias_correction_kl multiplies by w with gradient: c = w s.
      {"k3-as-loss,preset=trl", false,
       [](double s, double) { return expected{k3f(s), k3d(s)}; }},
      {"k3-as-loss,is=differentiable,preset=trl", true,
       [](double s, double w) { return expected{w * k3f(s), w * s}; }},
      // slime: unclamped; low_var_kl clamps w k after the weight; unbiased-kl weight.
      {"k3-as-loss,preset=slime,agg=token-sum", false,
       [](double s, double) { return expected{k3f(s), k3d(s)}; }},
      {"k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight,agg=token-sum",
       true,
       [](double s, double w) {
         const double kl = w * k3f(s);
         return expected{clampd(kl, -10, 10), kl <= 10 ? w * s : 0.0};
       }},
      // open-instruct: d = clamp(s, -40, 40) first, no value clamp; estimator 3 = ratio * d
      // with the ratio carrying gradient.
      {"k3-as-loss,preset=open-instruct", false,
       [](double s, double) {
         const double d = clampd(s, -40, 40);
         return expected{k3f(d), std::abs(s) <= 40 ? k3d(d) : 0.0};
       }},
      {"k2-as-loss,preset=open-instruct", false,
       [](double s, double) {
         const double d = clampd(s, -40, 40);
         return expected{d * d / 2, std::abs(s) <= 40 ? d : 0.0};
       }},
      {"k1-as-loss,is=differentiable,preset=open-instruct", true,
       [](double s, double w) {
         const double d = clampd(s, -40, 40);
         return expected{w * d, w * ((std::abs(s) <= 40 ? 1.0 : 0.0) + d)};
       }},
      // ROLL: k3 value clamp +-10 only.
      {"k3-as-loss,preset=roll,agg=token-sum", false,
       [](double s, double) {
         const double k = k3f(s);
         return expected{clampd(k, -10, 10), k <= 10 ? k3d(s) : 0.0};
       }},
      {"abs-in-reward,preset=roll,agg=token-sum", false,
       [](double s, double) { return expected{std::abs(s), std::abs(s)}; }},
  };
}

/// log-ratios at ordinary points and at every clamp edge of the presets: exactly at, and
/// 1e-3 inside and outside, the log-ratio bounds +-20 and +-40, the value bounds (k1 at
/// +-10, k2 at sqrt(20), k3 at -2.6109 and 10.99998).
std::vector<double> points() {
  std::vector<double> out = {-1.3, -0.2, 0.0, 0.4, 2.5, 4.0};
  for (double edge : {20.0, -20.0, 40.0, -40.0, 10.0, -10.0})
    for (double d : {0.0, 1e-3, -1e-3}) out.push_back(edge + d);
  for (double e : {std::sqrt(20.0), -std::sqrt(20.0), -2.6109, 10.99998})
    for (double d : {0.01, -0.01}) out.push_back(e + d);
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("presets: values and coefficients match each trainer's closed form",
                   "[presets]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (const auto& pc : cases()) {
    const spec s = parse_spec(std::string(pc.spec) + (std::string(pc.spec).find("agg=") ==
                                                              std::string::npos
                                                          ? ",agg=token-sum"
                                                          : ""));
    for (double target : points()) {
      rows<T> lp(1, 1), lr(1, 1), lb(1, 1), v(1, 1), c(1, 1);
      lp << T(-3);
      lr << T(-3 - target);
      lb << (pc.weighted ? T(-3.1) : T(-3));
      const summary r = evaluate(s, padded(lp, lr).with_behavior(lb), v, c);
      const double st = double(lp(0, 0) - lr(0, 0)), w = std::exp(double(lp(0, 0) - lb(0, 0)));
      const expected e = pc.formula(st, w);
      INFO(pc.spec << " s=" << st << " w=" << w);
      CHECK(r.guarded == 0);
      CHECK(double(v(0, 0)) == Approx(e.value).epsilon(tol).margin(tol));
      // With a differentiable weight both klgrad and the trainer add w k to w k', which
      // cancel (w (k3 + k3') = w s): the coefficient is good to a few ulp of the value.
      const double margin = tol + (pc.weighted ? 16 * std::numeric_limits<T>::epsilon() *
                                                     std::abs(w * k3f(st))
                                               : 0.0);
      CHECK(double(c(0, 0)) == Approx(e.coef).epsilon(tol).margin(margin));
    }
  }
}

TEST_CASE("presets: the fp32 overflow case lp = -100, lr = 0", "[presets][numerics]") {
  // Where the trainer is finite klgrad matches it; where it gives NaN or inf (OpenRLHF,
  // ROLL, slime low_var_kl: NaN gradient; TRL, slime k3: inf), klgrad returns the guarded
  // finite result and counts it.
  struct row {
    const char* spec;
    float value, coef;
    Eigen::Index guarded;
  };
  const float big = k3::value(-detail::exp_bound<float>());
  const float big_d = k3::derivative(-detail::exp_bound<float>());
  const row table[] = {
      {"k3-as-loss,preset=verl", 10.f, 0.f, 0},
      {"k3~k2-as-loss,preset=verl", 10.f, -100.f, 0},
      {"k1-as-loss,preset=verl", -100.f, 1.f, 0},
      {"k2-as-loss,preset=verl", 5000.f, -100.f, 0},
      {"abs-as-loss,preset=verl", 100.f, -1.f, 0},
      {"k3-as-loss,preset=easyr1", 10.f, 0.f, 0},
      {"k1-as-loss,preset=openrlhf", -10.f, 0.f, 0},
      {"k2-as-loss,preset=openrlhf", 10.f, 0.f, 0},
      {"k3-as-loss,preset=openrlhf", 10.f, 0.f, 1},  // OpenRLHF: NaN gradient
      {"k3-as-loss,preset=nemo-rl", 10.f, 0.f, 0},
      {"k2-as-loss,preset=nemo-rl", 10.f, 0.f, 0},
      {"k1-as-loss,preset=nemo-rl", -10.f, 0.f, 0},
      {"k3-as-loss,preset=trl", big, big_d, 1},  // TRL: inf / -inf
      {"k3-as-loss,preset=slime", big, big_d, 1},  // slime k3: inf / -inf
      {"k3-as-loss,preset=slime,clamp=value:-10:10/after-weight", 10.f, 0.f, 1},  // NaN grad
      {"k3-as-loss,preset=open-instruct", float(std::expm1(40.0) - 40.0), 0.f, 0},
      {"k3-as-loss,preset=roll", 10.f, 0.f, 1},  // ROLL: NaN gradient
  };
  for (const auto& t : table) {
    const spec s = parse_spec(std::string(t.spec) + ",agg=token-sum");
    rows<float> lp(1, 1), lr(1, 1), v(1, 1), c(1, 1);
    lp << -100.f;
    lr << 0.f;
    const summary r = evaluate(s, padded(lp, lr).with_behavior(lp), v, c);
    INFO(t.spec);
    CHECK(v(0, 0) == Approx(t.value).epsilon(1e-6));
    CHECK(c(0, 0) == Approx(t.coef).epsilon(1e-6));
    CHECK(r.guarded == t.guarded);
    CHECK(std::isfinite(v(0, 0)));
    CHECK(std::isfinite(c(0, 0)));
  }
}

TEST_CASE("presets: aggregation and weights each trainer applies by default", "[presets]") {
  CHECK(parse_spec("k3-as-loss,preset=slime").aggregation == aggregation::seq_mean_token_mean);
  CHECK(parse_spec("k3-as-loss,preset=roll").aggregation == aggregation::seq_mean_token_mean);
  for (const char* p : {"verl", "openrlhf", "nemo-rl", "trl", "open-instruct", "easyr1"})
    CHECK(parse_spec(std::string("k3-as-loss,preset=") + p).aggregation == aggregation::token_mean);
  CHECK(parse_spec("k3-as-loss,preset=nemo-rl").importance.mode == weighting::differentiable);
  CHECK(parse_spec("k3-in-reward,preset=nemo-rl").importance.mode == weighting::none);
  // NeMo-RL's default weight needs the batch's behavior log-probs (its own detached lp).
  rows<double> lp(1, 1), v(1, 1), c(1, 1);
  lp << -1;
  CHECK_THROWS_WITH(evaluate(parse_spec("k3-as-loss,preset=nemo-rl"), padded(lp, lp), v, c),
                    Catch::Contains("preset=nemo-rl's default weight"));
}
