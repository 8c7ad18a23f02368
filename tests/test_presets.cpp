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
  // The "+ 1e-8" of the default mode's denominators (denominators()): NeMo-RL's global token
  // mean and ROLL's seq-mean-token-mean; the others divide by exact counts.
  CHECK(parse_spec("k3-as-loss,preset=nemo-rl").aggregation_constants.eps == 1e-8);
  CHECK(parse_spec("k3-as-loss,preset=nemo-rl").aggregation_constants.seq_eps == 0.0);
  CHECK(parse_spec("k3-as-loss,preset=roll").aggregation_constants.eps == 1e-8);
  CHECK(parse_spec("k3-as-loss,preset=roll").aggregation_constants.seq_eps == 1e-8);
  for (const char* p : {"verl", "openrlhf", "trl", "slime", "open-instruct", "easyr1"}) {
    const spec s = parse_spec(std::string("k3-as-loss,preset=") + p);
    CHECK(s.aggregation_constants.eps == 0.0);
    CHECK(s.aggregation_constants.seq_eps == 0.0);
    CHECK(s.aggregation_constants.scale == 1.0);
  }
  // NeMo-RL's default weight exp(lp - sg(lp)) needs no behaviour log-probs: without them
  // the batch's own logp is the behaviour, bit for bit the same as passing it (padded and
  // packed, float and double), and k3's coefficient is then s (docs/presets.md).
  rows<double> lp(2, 3), lr(2, 3), v(2, 3), c(2, 3), v2(2, 3), c2(2, 3);
  lp << -1.0, -0.3, -2.5, -0.7, -1.9, -25.0;
  lr << -1.2, -0.1, -2.0, -0.9, -1.0, -1.0;
  for (const char* text : {"k3-as-loss,preset=nemo-rl,agg=token-sum",
                           "k1-as-loss,preset=nemo-rl", "k2-as-loss,preset=nemo-rl,agg=seq-mean-token-mean"}) {
    INFO(text);
    const spec s = parse_spec(text);
    const summary without = evaluate(s, padded(lp, lr), v, c);
    const summary with = evaluate(s, padded(lp, lr).with_behavior(lp), v2, c2);
    CHECK((v == v2).all());
    CHECK((c == c2).all());
    CHECK(without.loss == with.loss);
    Eigen::ArrayXf flp(6), flr(6), fv(6), fc(6), fv2(6), fc2(6);
    for (Index i = 0; i < 6; ++i) {
      flp[i] = float(lp(i / 3, i % 3));
      flr[i] = float(lr(i / 3, i % 3));
    }
    Eigen::Array<Index, 3, 1> offsets(0, 2, 6);
    evaluate(s, packed(flp, flr, offsets), fv, fc);
    evaluate(s, packed(flp, flr, offsets).with_behavior(flp), fv2, fc2);
    CHECK((fv == fv2).all());
    CHECK((fc == fc2).all());
  }
  evaluate(parse_spec("k3-as-loss,preset=nemo-rl,agg=token-sum"), padded(lp, lr), v, c);
  for (Index t = 0; t < 2; ++t)  // s inside both clamps: c = w k3 + w k3' = s
    CHECK(c(0, t) == Approx(lp(0, t) - lr(0, t)).epsilon(1e-14));
  CHECK(c(1, 2) == 0.0);  // s = -24: input clamp active, value clamp too
  // Other presets still need them.
  CHECK_THROWS_WITH(evaluate(parse_spec("k3-as-loss,is=differentiable,preset=trl"), padded(lp, lr), v, c),
                    Catch::Contains("no behavior log-probs"));
}

// ---- aggregation: each trainer's normalisation, number for number ------------------------
//
// A batch of three sequences (n_b = 3, 0 and 5 valid tokens: one is empty) evaluated as
// each trainer aggregates its KL loss, against the trainer's per-token weight written out
// here from its source (docs/presets.md names the file and commit of each formula):
// coef_{b,t} = beta * a_b * c(s_{b,t}), loss = beta * sum a_b v_{b,t}. In double the
// trainers' "+ 1e-8" changes a_b by 1e-8 / n_b relative, far above the tolerance, so every
// epsilon is checked; in float it is below half an ulp (as in the trainers' fp32
// arithmetic) and the tolerance is float's.

namespace {

struct agg_case {
  const char* source;  ///< trainer, mode and where the formula comes from
  const char* spec;
  Eigen::Index tokens, sequences;  ///< options::counts (-1: local)
  bool weighted;                   ///< NeMo-RL: lb = lp (its exp(lp - sg lp) weight)
  std::function<double(double n_b)> a;  ///< the trainer's weight of a token of sequence b
};

constexpr double beta = 0.04;
constexpr double eps = 1e-8;
// The local batch: N = 8 valid tokens, 2 non-empty sequences, 3 rows; D, G, P are the data
// parallel size, gradient-accumulation steps and processes of the run it stands for.
constexpr double N = 8, B = 2, rows_local = 3, D = 8, G = 4, P = 2;

std::vector<agg_case> agg_cases() {
  return {
      // verl 1dda039b, core_algos.agg_loss with the worker's global counts and dp_size D.
      {"verl token-mean: D sum / N_global", "k3-as-loss,preset=verl,agg-scale=8", 40, -1, false,
       [](double) { return D / 40; }},
      {"verl seq-mean-token-mean: D sum_b [sum_t / (n_b + 1e-8)] / B_global",
       "k3-as-loss,preset=verl,agg=seq-mean-token-mean,agg-scale=8", -1, 6, false,
       [](double n) { return D / (6 * (n + eps)); }},
      {"verl seq-mean-token-sum: D sum / B_global",
       "k3-as-loss,preset=verl,agg=seq-mean-token-sum,agg-scale=8", -1, 6, false,
       [](double) { return D / 6; }},
      {"verl seq-mean-token-sum-norm: D sum / (B_global L), L = padded width 5",
       "k3-as-loss,preset=verl,agg=seq-mean-token-sum-norm,agg-norm=5,agg-scale=8", -1, 6, false,
       [](double) { return D / (6 * 5.0); }},
      {"verl token-sum: D sum", "k3-as-loss,preset=verl,agg=token-sum,agg-scale=8", -1, -1, false,
       [](double) { return D; }},
      // volcengine/verl b178a3cd (Jan 2026): seq-mean-token-sum-norm was sum / L, and the
      // legacy dp_actor scaled the micro-batch loss by 1 / grad-accum.
      {"verl Jan-2026 seq-mean-token-sum-norm: sum / L / G",
       "k3-as-loss,preset=verl,agg=token-sum-norm,agg-norm=4096,agg-scale=0.25", -1, -1, false,
       [](double) { return 1 / (4096 * G); }},
      {"verl Jan-2026 legacy dp_actor token-mean: local sum / N_local / G",
       "k3-as-loss,preset=verl,agg-scale=0.25", -1, -1, false, [](double) { return 1 / (N * G); }},
      // ROLL 8eb27cc2, functionals.agg_loss with global counts; apply_loss_scale multiplies
      // by D * G (the micro-batches of the step).
      {"ROLL seq-mean-token-mean: D G sum_b [sum_t / (n_b + 1e-8)] / (B_global + 1e-8)",
       "k3-as-loss,preset=roll,agg-scale=32", -1, 5, false,
       [](double n) { return D * G / ((5 + eps) * (n + eps)); }},
      {"ROLL seq-mean-token-sum: sum / (B + 1e-8), B = global_valid_samples (one rank here)",
       "k3-as-loss,preset=roll,agg=seq-mean-token-sum", -1, -1, false,
       [](double) { return 1 / (B + eps); }},
      {"ROLL token-mean: sum / N_global", "k3-as-loss,preset=roll,agg=token-mean", 40, -1, false,
       [](double) { return 1.0 / 40; }},
      {"ROLL seq-mean-token-sum-norm: sum / L (no /B)",
       "k3-as-loss,preset=roll,agg=token-sum-norm,agg-norm=5", -1, -1, false,
       [](double) { return 1.0 / 5; }},
      // NeMo-RL 7ea279ab, utils.masked_mean (+ 1e-8) with the global counts; the automodel
      // train loop multiplies by dp_size * cp_size before backward.
      {"NeMo-RL token-level: dp cp sum / (N_global + 1e-8)", "k3-as-loss,preset=nemo-rl,agg-scale=2",
       40, -1, true, [](double) { return 2 / (40 + eps); }},
      {"NeMo-RL sequence-level: sum_b [sum_t / (n_b + 1e-8)] / (B_global + 1e-8)",
       "k3-as-loss,preset=nemo-rl,agg=seq-mean-token-mean", -1, 6, true,
       [](double n) { return 1 / ((6 + eps) * (n + eps)); }},
      // TRL f2cd5771, GRPOTrainer._compute_loss per micro-batch of 3 rows (one empty: TRL's
      // means count every row); max(count, 1) changes nothing for a valid token.
      {"TRL grpo: mean over rows of [sum_t / max(n_b, 1)] / G",
       "k3-as-loss,preset=trl,agg=seq-mean-token-mean,agg-scale=0.25", -1, 3, false,
       [](double n) { return 1 / (rows_local * n * G); }},
      {"TRL bnpo: sum / max(N_local, 1) / G", "k3-as-loss,preset=trl,agg-scale=0.25", -1, -1, false,
       [](double) { return 1 / (N * G); }},
      {"TRL dr_grpo: sum / (rows * max_completion_length) / G",
       "k3-as-loss,preset=trl,agg=seq-mean-token-sum-norm,agg-norm=512,agg-scale=0.25", -1, 3,
       false, [](double) { return 1 / (rows_local * 512 * G); }},
      {"TRL dapo: sum / (num_items_in_batch / P)", "k3-as-loss,preset=trl,agg-scale=2", 40, -1,
       false, [](double) { return P / 40; }},
      {"TRL luspo after PR #6654: mean over rows of sum_t / G",
       "k3-as-loss,preset=trl,agg=seq-mean-token-sum,agg-scale=0.25", -1, 3, false,
       [](double) { return 1 / (rows_local * G); }},
      // OpenRLHF 3c3be623, loss.aggregate_loss: sum / (N_step / G) * D.
      {"OpenRLHF token-level: D sum / (N_step / G)", "k3-as-loss,preset=openrlhf,agg-scale=32", 40,
       -1, false, [](double) { return D * G / 40; }},
      {"OpenRLHF per-sample: D sum_b [sum_t / (n_b + 1e-8)] / B_global",
       "k3-as-loss,preset=openrlhf,agg=seq-mean-token-mean,agg-scale=8", -1, 6, false,
       [](double n) { return D / (6 * (n + eps)); }},
      // open-instruct e6c3044a: loss_denominator=1000 (a float) and world / sp_size = 4.
      {"open-instruct loss_denominator=1000: world sum / 1000",
       "k3-as-loss,preset=open-instruct,agg=token-sum-norm,agg-norm=1000,agg-scale=4", -1, -1,
       false, [](double) { return 4.0 / 1000; }},
      // slime 624b824a: sum_b sum_t / max(n_b, 1), times num_microbatches * dp / B_step.
      {"slime: M D sum_b [sum_t / max(n_b, 1)] / B_step", "k3-as-loss,preset=slime,agg-scale=16",
       -1, 64, false, [](double n) { return 16 / (64 * n); }},
  };
}

}  // namespace

TEMPLATE_TEST_CASE("presets: each trainer's aggregation of the KL loss, with its epsilons and "
                   "scale", "[presets][aggregation]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  rows<double> lp_d(3, 5), lr_d(3, 5), mask_d(3, 5);
  lp_d << -1.2, -0.7, -2.1, -0.4, -3.0,  //
      -0.9, -1.5, -0.3, -1.1, -0.8,      //
      -2.2, -0.6, -1.4, -0.9, -0.5;
  lr_d << -1.0, -0.9, -1.8, -0.4, -2.5,  //
      -1.1, -1.4, -0.2, -1.0, -0.7,      //
      -1.7, -0.9, -1.9, -0.3, -0.2;
  mask_d << 1, 1, 1, 0, 0,  //
      0, 0, 0, 0, 0,        //
      1, 1, 1, 1, 1;
  const rows<T> lp = lp_d.cast<T>(), lr = lr_d.cast<T>(), mask = mask_d.cast<T>();
  for (const auto& ac : agg_cases()) {
    const spec s = parse_spec(std::string(ac.spec) + ",beta=0.04");
    options opt;
    opt.counts.tokens = ac.tokens;
    opt.counts.sequences = ac.sequences;
    rows<T> v(3, 5), c(3, 5);
    const summary r = evaluate(s, padded(lp, lr, mask).with_behavior(lp), v, c, opt);
    INFO(ac.source << ": " << ac.spec);
    REQUIRE(r.guarded == 0);
    double loss = 0;
    for (Eigen::Index b = 0; b < 3; ++b) {
      const double n_b = double((mask.row(b) != T(0)).count());
      for (Eigen::Index t = 0; t < 5; ++t) {
        if (mask(b, t) == T(0)) {
          CHECK(c(b, t) == T(0));
          continue;
        }
        const double st = double(lp(b, t)) - double(lr(b, t));
        // k3 as a loss: c = 1 - e^-s; NeMo-RL's weight exp(lp - sg lp) makes it s.
        const double k = k3f(st), dk = ac.weighted ? st : k3d(st);
        const double a = ac.a(n_b);
        CHECK(double(v(b, t)) == Approx(k).epsilon(tol).margin(1e-300));
        CHECK(double(c(b, t)) == Approx(beta * a * dk).epsilon(tol).margin(1e-300));
        loss += beta * a * k;
      }
    }
    CHECK(r.loss == Approx(loss).epsilon(tol));
  }
}

TEST_CASE("presets: the trainers' 1e-8 is modelled, not rounded away, in double",
          "[presets][aggregation]") {
  // The same batch without the epsilons differs by 1e-8 / n_b relative: far beyond double's
  // rounding, so the closed forms above could not pass without them.
  rows<double> lp(1, 4), lr(1, 4), v(1, 4), with(1, 4), without(1, 4);
  lp << -1.2, -0.7, -2.1, -0.4;
  lr << -1.0, -0.9, -1.8, -0.5;
  for (const char* text : {"k3-as-loss,preset=roll", "k3-as-loss,preset=nemo-rl,is=none",
                           "k3-as-loss,preset=verl,agg=seq-mean-token-mean"}) {
    const spec s = parse_spec(text);
    spec bare = s;
    bare.aggregation_constants.eps = bare.aggregation_constants.seq_eps = 0.0;
    evaluate(s, padded(lp, lr), v, with);
    evaluate(bare, padded(lp, lr), v, without);
    INFO(text);
    for (Eigen::Index t = 0; t < 4; ++t) {
      const double rel = std::abs(with(0, t) / without(0, t) - 1);
      CHECK(rel > 1e-10);
      CHECK(rel < 2e-8);
    }
  }
}

TEMPLATE_TEST_CASE("presets: a trainer's local means equal their global form, and the dp factor "
                   "cancels DDP's average", "[presets][aggregation]", float, double) {
  using T = TestType;
  // Four micro-batches (P = 2 processes x G = 2 accumulation steps) of 2 rows each.
  const Eigen::Index rows_mb = 2, cols = 6;
  rows<T> lp(8, cols), lr(8, cols), mask(8, cols);
  for (Eigen::Index i = 0; i < 8; ++i)
    for (Eigen::Index t = 0; t < cols; ++t) {
      lp(i, t) = T(-0.3 - 0.11 * double((i * 7 + t * 3) % 13));
      lr(i, t) = T(-0.5 - 0.07 * double((i * 5 + t * 11) % 17));
      mask(i, t) = T(t < 1 + (i * 3) % cols ? 1 : 0);
    }
  rows<T> v(8, cols), whole(8, cols);
  evaluate(parse_spec("k3-as-loss,agg=seq-mean-token-mean,beta=0.04"), padded(lp, lr, mask), v,
           whole);
  const double tol = std::is_same_v<T, float> ? 4e-7 : 1e-15;
  for (Eigen::Index mb = 0; mb < 4; ++mb) {
    const rows<T> l = lp.middleRows(mb * rows_mb, rows_mb), r = lr.middleRows(mb * rows_mb, rows_mb),
                  m = mask.middleRows(mb * rows_mb, rows_mb);
    rows<T> sv(rows_mb, cols), local(rows_mb, cols), global(rows_mb, cols);
    // TRL grpo: the micro-batch's own mean over its rows, divided by G = 2 ...
    options own;
    own.counts.sequences = rows_mb;
    evaluate(parse_spec("k3-as-loss,preset=trl,agg=seq-mean-token-mean,agg-scale=0.5,beta=0.04"),
             padded(l, r, m), sv, local, own);
    // ... is the global seq-mean over all P G rows times P (which DDP's average divides out).
    options all;
    all.counts.sequences = 8;
    evaluate(parse_spec("k3-as-loss,preset=trl,agg=seq-mean-token-mean,agg-scale=2,beta=0.04"),
             padded(l, r, m), sv, global, all);
    for (Eigen::Index i = 0; i < rows_mb; ++i)
      for (Eigen::Index t = 0; t < cols; ++t) {
        INFO("micro-batch " << mb << " row " << i << " t " << t);
        CHECK(double(local(i, t)) == Approx(double(global(i, t))).epsilon(tol).margin(1e-300));
        // Averaged over the P = 2 ranks, the unsharded coefficient.
        CHECK(double(global(i, t)) / P ==
              Approx(double(whole(mb * rows_mb + i, t))).epsilon(tol).margin(1e-300));
      }
  }
}
