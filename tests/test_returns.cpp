// Trainer integration: KL reward shaping, discounted returns and GAE (returns.hpp) against
// hand-computed cases, padded vs packed layouts, masks, shapes and errors, level=to-go, and
// the exact oracle (GAE(1, lambda) with an exact critic is unbiased for every lambda).
#include <klgrad/evaluate.hpp>
#include <klgrad/returns.hpp>
#include <klgrad/spec/spec.hpp>

#include "oracle_cases.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>

namespace {

using rows = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using flat = Eigen::ArrayXd;
using Eigen::Index;
const double qnan = std::numeric_limits<double>::quiet_NaN();

/// The hand-computed batch: B = 2, T = 4, beta = 0.5, gamma = 0.5, lambda = 0.5.
struct hand_case {
  rows mask{2, 4}, kl{2, 4}, values{2, 4};
  Eigen::Array2d task{1.0, -1.0};
  hand_case() {
    mask << 1, 1, 1, 0,  //
        1, 0, 1, 1;
    kl << 0.1, 0.2, -0.1, qnan,  //
        0.4, qnan, 0.2, 0.3;
    values << 0.2, 0.4, 0.8, qnan,  //
        0.1, qnan, -0.2, -0.5;
  }
};

void check_row(const rows& got, Index b, std::initializer_list<double> want) {
  Index t = 0;
  for (double w : want) {
    INFO("sequence " << b << ", position " << t);
    CHECK(got(b, t) == Approx(w).margin(1e-15).epsilon(1e-13));
    ++t;
  }
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const klgrad::error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("returns: reward shaping, returns and GAE by hand", "[returns]") {
  hand_case h;
  const auto layout = klgrad::padded_layout(h.mask);
  rows r(2, 4), g(2, 4), a(2, 4), ret(2, 4);
  klgrad::shape_rewards(layout, h.task, h.kl, 0.5, r);
  // r_t = -0.5 k_t, plus the task reward on the last valid token; masked slots 0.
  //   row 0: -0.05, -0.1, 0.05 + 1 = 1.05, (masked)
  //   row 1: -0.2, (masked), -0.1, -0.15 - 1 = -1.15
  check_row(r, 0, {-0.05, -0.1, 1.05, 0});
  check_row(r, 1, {-0.2, 0, -0.1, -1.15});

  klgrad::discounted_returns(layout, r, 0.5, g);
  // Discounting by valid tokens (position 1 of row 1 is skipped, as level=to-go does):
  //   row 0: G2 = 1.05, G1 = -0.1 + 0.5 * 1.05 = 0.425, G0 = -0.05 + 0.5 * 0.425 = 0.1625
  //   row 1: G3 = -1.15, G2 = -0.1 + 0.5 * -1.15 = -0.675, G0 = -0.2 + 0.5 * -0.675 = -0.5375
  check_row(g, 0, {0.1625, 0.425, 1.05, 0});
  check_row(g, 1, {-0.5375, 0, -0.675, -1.15});

  klgrad::gae(layout, r, h.values, 0.5, 0.5, a, ret);
  // delta_t = r_t + 0.5 V_next - V_t, A_t = delta_t + 0.25 A_next, V_next = A_next = 0 at the end.
  //   row 0: delta2 = 1.05 - 0.8 = 0.25;             A2 = 0.25
  //          delta1 = -0.1 + 0.4 - 0.4 = -0.1;        A1 = -0.1 + 0.25 * 0.25 = -0.0375
  //          delta0 = -0.05 + 0.2 - 0.2 = -0.05;      A0 = -0.05 + 0.25 * -0.0375 = -0.059375
  //   row 1: delta3 = -1.15 + 0.5 = -0.65;            A3 = -0.65
  //          delta2 = -0.1 - 0.25 + 0.2 = -0.15;      A2 = -0.15 + 0.25 * -0.65 = -0.3125
  //          delta0 = -0.2 - 0.1 - 0.1 = -0.4;        A0 = -0.4 + 0.25 * -0.3125 = -0.478125
  // returns = A + V.
  check_row(a, 0, {-0.059375, -0.0375, 0.25, 0});
  check_row(a, 1, {-0.478125, 0, -0.3125, -0.65});
  check_row(ret, 0, {-0.059375 + 0.2, -0.0375 + 0.4, 0.25 + 0.8, 0});
  check_row(ret, 1, {-0.478125 + 0.1, 0, -0.3125 - 0.2, -0.65 - 0.5});
  CHECK(a.allFinite());
  CHECK(ret.allFinite());
}

TEST_CASE("returns: GAE at lambda = 1 is G - V and at lambda = 0 the one-step TD error",
          "[returns]") {
  hand_case h;
  const auto layout = klgrad::padded_layout(h.mask);
  rows r(2, 4), g(2, 4), a(2, 4), ret(2, 4);
  klgrad::shape_rewards(layout, h.task, h.kl, 0.5, r);
  for (double gamma : {1.0, 0.9, 0.5}) {
    klgrad::discounted_returns(layout, r, gamma, g);
    klgrad::gae(layout, r, h.values, gamma, 1.0, a, ret);
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 4; ++t)
        if (h.mask(b, t) != 0) {
          CHECK(a(b, t) == Approx(g(b, t) - h.values(b, t)).margin(1e-14));
          CHECK(ret(b, t) == Approx(g(b, t)).margin(1e-14));
        }
    klgrad::gae(layout, r, h.values, gamma, 0.0, a, ret);
    // One-step delta: row 1, position 0's next valid token is position 2.
    CHECK(a(1, 0) == Approx(r(1, 0) + gamma * h.values(1, 2) - h.values(1, 0)).margin(1e-14));
    CHECK(a(0, 2) == Approx(r(0, 2) - h.values(0, 2)).margin(1e-14));
  }
}

TEST_CASE("returns: padded and packed layouts agree, masks make any slot harmless",
          "[returns][layout]") {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0.0, 1.0);
  std::bernoulli_distribution keep(0.7);
  const Index B = 6, T = 9;
  rows kl(B, T), values(B, T), mask(B, T);
  flat task(B);
  for (Index b = 0; b < B; ++b) {
    task(b) = n(rng);
    for (Index t = 0; t < T; ++t) {
      mask(b, t) = (b == 3) ? 0.0 : double(keep(rng));  // sequence 3 has no valid token
      kl(b, t) = mask(b, t) != 0 ? n(rng) : qnan;
      values(b, t) = mask(b, t) != 0 ? n(rng) : std::numeric_limits<double>::infinity();
    }
  }
  const auto padded = klgrad::padded_layout(mask);
  rows r(B, T), g(B, T), a(B, T), ret(B, T);
  klgrad::shape_rewards(padded, task, kl, 0.2, r);
  klgrad::discounted_returns(padded, r, 0.95, g);
  klgrad::gae(padded, r, values, 0.95, 0.9, a, ret);
  CHECK(r.allFinite());
  CHECK(ret.allFinite());

  // Packed, with the same mask: offsets 0, T, 2T, ...
  {
    Eigen::Array<long, Eigen::Dynamic, 1> offsets(B + 1);
    for (Index b = 0; b <= B; ++b) offsets(b) = long(b * T);
    const Eigen::Map<const flat> kf(kl.data(), B * T), vf(values.data(), B * T),
        mf(mask.data(), B * T);
    const auto packed = klgrad::packed_layout(offsets, mf);
    flat pr(B * T), pg(B * T), pa(B * T), pret(B * T);
    klgrad::shape_rewards(packed, task, kf, 0.2, pr);
    klgrad::discounted_returns(packed, pr, 0.95, pg);
    klgrad::gae(packed, pr, vf, 0.95, 0.9, pa, pret);
    CHECK((pr - Eigen::Map<const flat>(r.data(), B * T)).abs().maxCoeff() == 0);
    CHECK((pg - Eigen::Map<const flat>(g.data(), B * T)).abs().maxCoeff() == 0);
    CHECK((pa - Eigen::Map<const flat>(a.data(), B * T)).abs().maxCoeff() == 0);
    CHECK((pret - Eigen::Map<const flat>(ret.data(), B * T)).abs().maxCoeff() == 0);
  }
  // Packed without padding: only the valid tokens, ragged offsets (one empty sequence).
  {
    std::vector<int> offsets{0};
    std::vector<double> kv, vv;
    for (Index b = 0; b < B; ++b) {
      for (Index t = 0; t < T; ++t)
        if (mask(b, t) != 0) {
          kv.push_back(kl(b, t));
          vv.push_back(values(b, t));
        }
      offsets.push_back(int(kv.size()));
    }
    const Index N = Index(kv.size());
    const Eigen::Map<const Eigen::ArrayXi> off(offsets.data(), B + 1);
    const auto packed = klgrad::packed_layout(off);
    flat pr(N), pg(N), pa(N), pret(N);
    klgrad::shape_rewards(packed, task, Eigen::Map<const flat>(kv.data(), N), 0.2, pr);
    klgrad::discounted_returns(packed, pr, 0.95, pg);
    klgrad::gae(packed, pr, Eigen::Map<const flat>(vv.data(), N), 0.95, 0.9, pa, pret);
    Index i = 0;
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < T; ++t)
        if (mask(b, t) != 0) {
          INFO("sequence " << b << ", position " << t);
          CHECK(pr(i) == r(b, t));
          CHECK(pg(i) == g(b, t));
          CHECK(pa(i) == a(b, t));
          CHECK(pret(i) == ret(b, t));
          ++i;
        } else {
          CHECK(r(b, t) == 0);
          CHECK(g(b, t) == 0);
          CHECK(a(b, t) == 0);
          CHECK(ret(b, t) == 0);
        }
  }
  // In place: rewards over kl, returns and advantages over rewards and values.
  {
    rows k2 = kl, v2 = values;
    klgrad::shape_rewards(padded, task, k2, 0.2, k2);
    CHECK((k2 - r).abs().maxCoeff() == 0);
    rows r2 = k2;
    klgrad::gae(padded, r2, v2, 0.95, 0.9, r2, v2);
    CHECK((r2 - a).abs().maxCoeff() == 0);
    CHECK((v2 - ret).abs().maxCoeff() == 0);
  }
}

TEST_CASE("returns: discounting matches level=to-go of klgrad::evaluate", "[returns][layout]") {
  // k1-in-reward at level=to-go with agg=token-sum has coefficient R_t = sum gamma^. k_t'
  // over valid tokens; the returns of rewards -k_t (beta 1, task reward 0) are -R_t.
  std::mt19937_64 rng(11);
  std::normal_distribution<double> n(0.0, 1.0);
  std::bernoulli_distribution keep(0.6);
  const Index B = 4, T = 12;
  rows lp(B, T), lr(B, T), mask(B, T), value(B, T), coef(B, T), r(B, T), g(B, T);
  for (Index i = 0; i < lp.size(); ++i) {
    lp.data()[i] = -std::abs(n(rng));
    lr.data()[i] = -std::abs(n(rng));
    mask.data()[i] = keep(rng);
  }
  for (double gamma : {1.0, 0.7}) {
    const auto s = klgrad::parse_spec("k1-in-reward,level=to-go,agg=token-sum,gamma=" +
                                      std::to_string(gamma));
    klgrad::evaluate(s, klgrad::padded(lp, lr, mask), value, coef);
    const auto layout = klgrad::padded_layout(mask);
    klgrad::shape_rewards(layout, flat::Zero(B), value, 1.0, r);
    klgrad::discounted_returns(layout, r, gamma, g);
    CHECK((g + coef).abs().maxCoeff() < 1e-12);
    // The batch's own layout is the same layout: the same returns, bit for bit.
    rows g_batch(B, T);
    klgrad::discounted_returns(klgrad::padded(lp, lr, mask).layout(), r, gamma, g_batch);
    CHECK((g_batch == g).all());
  }
}

TEST_CASE("returns: a packed batch's layout is its offsets and mask", "[returns][layout]") {
  // Two sequences of 3 and 2 tokens, token 1 masked: the layout of klgrad::packed(...)
  // gives the returns that packed_layout(offsets, mask) gives, and those of the closed form
  // G = (r0 + 0.5 r2, 0, r2 | r3 + 0.5 r4, r4) (gamma 0.5 by valid tokens).
  flat lp(5), lr(5), r(5), g(5), g_layout(5);
  lp << -1, -2, -3, -4, -5;
  lr = lp;
  r << 1, 100, 2, 3, 4;
  Eigen::Array<int, Eigen::Dynamic, 1> offsets(3), mask(5);
  offsets << 0, 3, 5;
  mask << 1, 0, 1, 1, 1;
  klgrad::discounted_returns(klgrad::packed(lp, lr, offsets, mask).layout(), r, 0.5, g);
  klgrad::discounted_returns(klgrad::packed_layout(offsets, mask), r, 0.5, g_layout);
  CHECK((g == g_layout).all());
  flat expected(5);
  expected << 1 + 0.5 * 2, 0, 2, 3 + 0.5 * 4, 4;
  CHECK((g == expected).all());
}

TEST_CASE("returns: finite rewards give finite returns, saturated at the largest number",
          "[returns]") {
  // Closed form: without saturation G_0 = 3e38 + 3e38 overflows float to +inf; the sum of
  // level=to-go that discounted_returns runs keeps it at FLT_MAX, as evaluate() keeps its
  // coefficients finite. The negative row mirrors it.
  using frows = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  frows r(2, 2), g(2, 2);
  r << 3e38f, 3e38f, -3e38f, -3e38f;
  klgrad::discounted_returns(klgrad::padded_layout(2, 2), r, 1.0, g);
  const float top = std::numeric_limits<float>::max();
  CHECK(g(0, 0) == top);
  CHECK(g(0, 1) == 3e38f);
  CHECK(g(1, 0) == -top);
  CHECK(g(1, 1) == -3e38f);
}

TEST_CASE("returns: shapes and bad values are reported with names, shapes and indices",
          "[returns][errors]") {
  hand_case h;
  const auto layout = klgrad::padded_layout(h.mask);
  rows r(2, 4), small(2, 3), a(2, 4), ret(2, 4);
  std::string e = error_of([&] { klgrad::shape_rewards(layout, h.task, small, 0.5, r); });
  CHECK(e.find("kl is 2x3") != std::string::npos);
  CHECK(e.find("2x4") != std::string::npos);
  CHECK_THROWS_AS(klgrad::shape_rewards(layout, h.task, small, 0.5, r), klgrad::shape_error);
  e = error_of([&] { klgrad::shape_rewards(layout, flat::Zero(3), h.kl, 0.5, r); });
  CHECK(e.find("task_reward is 3x1") != std::string::npos);
  CHECK(e.find("2 sequences") != std::string::npos);
  e = error_of([&] { klgrad::gae(layout, r, h.values, 1.0, 1.0, a, small); });
  CHECK(e.find("returns is 2x3") != std::string::npos);
  // Column-major B x T is refused, not copied.
  Eigen::ArrayXXd colmajor(2, 4);
  CHECK_THROWS_AS(klgrad::discounted_returns(layout, colmajor, 1.0, r), klgrad::shape_error);
  // Packed: wrong length.
  Eigen::Array3i off(0, 2, 5);
  const auto packed = klgrad::packed_layout(off);
  flat four(4), five(5);
  e = error_of([&] { klgrad::discounted_returns(packed, four, 1.0, five); });
  CHECK(e.find("rewards has 4 tokens") != std::string::npos);
  CHECK(e.find("5") != std::string::npos);
  CHECK_THROWS_AS(klgrad::packed_layout(off, flat(4)), klgrad::shape_error);

  // Non-finite values in valid tokens, bad parameters.
  rows kl = h.kl;
  kl(1, 2) = qnan;
  e = error_of([&] { klgrad::shape_rewards(layout, h.task, kl, 0.5, r); });
  CHECK(e.find("kl at sequence 1, position 2 is nan") != std::string::npos);
  CHECK_THROWS_AS(klgrad::shape_rewards(layout, h.task, kl, 0.5, r), klgrad::input_error);
  Eigen::Array2d task(1.0, std::numeric_limits<double>::infinity());
  e = error_of([&] { klgrad::shape_rewards(layout, task, h.kl, 0.5, r); });
  CHECK(e.find("task_reward[1] is inf") != std::string::npos);
  e = error_of([&] { klgrad::shape_rewards(layout, h.task, h.kl, -1.0, r); });
  CHECK(e.find("beta = -1") != std::string::npos);
  klgrad::shape_rewards(layout, h.task, h.kl, 0.5, r);
  e = error_of([&] { klgrad::discounted_returns(layout, r, 1.5, ret); });
  CHECK(e.find("gamma = 1.5") != std::string::npos);
  e = error_of([&] { klgrad::gae(layout, r, h.values, 1.0, -0.1, a, ret); });
  CHECK(e.find("lambda = -0.1") != std::string::npos);
  rows v = h.values;
  v(0, 1) = qnan;
  e = error_of([&] { klgrad::gae(layout, r, v, 1.0, 1.0, a, ret); });
  CHECK(e.find("values at sequence 0, position 1 is nan") != std::string::npos);
  CHECK_THROWS_AS(klgrad::padded_layout(-1, 3), klgrad::shape_error);
}

// ---------------------------------------------------------------------------------------
// The exact oracle: E[sum_t A_t grad log pi] with A from GAE(1, lambda) and an exact critic
// equals grad (E[R] - beta KL_seq) for every lambda.

namespace {

using namespace klgrad::oracle;

/// d E_pi[R] / dz by a backward recursion over prefixes: U(h) = E[R | h], and row h gets
/// d_pi(h) pi_h (U(h y) - U(h)). Independent of any sampling or score-function sum.
vector reward_gradient(const tabular& pi, const vector& reward) {
  const matrix lp = pi.log_probs();
  const vector d = state_distribution(pi, lp);
  const Index V = pi.vocab;
  vector next = reward, g(pi.parameters());
  for (Index t = pi.steps - 1; t >= 0; --t) {
    vector cur(tabular::power(V, t));
    for (Index prefix = 0; prefix < cur.size(); ++prefix) {
      const Index r = pi.row(t, prefix);
      vector q(V), p(V);
      for (Index y = 0; y < V; ++y) {
        q(y) = next(prefix * V + y);
        p(y) = std::exp(lp(r, y));
      }
      cur(prefix) = p.dot(q);
      g.segment(r * V, V) = d(r) * (p.array() * (q.array() - cur(prefix))).matrix();
    }
    next = cur;
  }
  return g;
}

double expected_reward(const tabular& pi, const vector& reward) {
  const sequences y = all_sequences(pi.vocab, pi.steps);
  const vector p = token_log_probs(pi, pi.log_probs(), y).rowwise().sum().array().exp().matrix();
  return p.dot(reward);
}

struct gae_setup {
  sequences y;
  matrix lp_rows, rewards, values;
  vector probs;
};

/// Every outcome's shaped rewards (KL from klgrad::evaluate, k1-in-reward) and exact critic
/// values V(h_t) = E[sum_{t' >= t} r_t' | h_t] (gamma = 1), by a backward recursion.
gae_setup setup(const tabular& pi, const tabular& ref, const vector& reward, double beta) {
  gae_setup out;
  out.y = all_sequences(pi.vocab, pi.steps);
  const Index B = out.y.rows(), T = pi.steps, V = pi.vocab;
  out.lp_rows = pi.log_probs();
  const matrix lr_rows = ref.log_probs();
  const matrix lp = token_log_probs(pi, out.lp_rows, out.y), lr = token_log_probs(ref, lr_rows, out.y);
  matrix value(B, T), coef(B, T);
  klgrad::evaluate(klgrad::parse_spec("k1-in-reward,agg=token-sum"), klgrad::padded(lp, lr), value,
                   coef);
  out.rewards.resize(B, T);
  klgrad::shape_rewards(klgrad::padded_layout(B, T), reward, value, beta, out.rewards);
  // Exact critic per row.
  vector critic(pi.rows()), next = reward;
  for (Index t = T - 1; t >= 0; --t) {
    vector cur(tabular::power(V, t));
    for (Index prefix = 0; prefix < cur.size(); ++prefix) {
      const Index r = pi.row(t, prefix);
      double v = 0;
      for (Index k = 0; k < V; ++k) {
        const double after = t + 1 < T ? critic(pi.row(t + 1, prefix * V + k)) : reward(prefix * V + k);
        v += std::exp(out.lp_rows(r, k)) * (-beta * (out.lp_rows(r, k) - lr_rows(r, k)) + after);
      }
      critic(r) = v;
      cur(prefix) = v;
    }
    next = cur;
  }
  out.values.resize(B, T);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) out.values(b, t) = critic(token_row(pi, out.y, b, t));
  out.probs = lp.rowwise().sum().array().exp().matrix();
  return out;
}

/// E[sum_t A_t d log pi(y_t|h_t)/dz] over all outcomes.
vector policy_gradient(const tabular& pi, const gae_setup& s, const matrix& advantages) {
  vector g = vector::Zero(pi.parameters());
  const matrix pr = s.lp_rows.array().exp().matrix();
  for (Index b = 0; b < s.y.rows(); ++b)
    for (Index t = 0; t < pi.steps; ++t) {
      const Index r = token_row(pi, s.y, b, t);
      const double c = s.probs(b) * advantages(b, t);
      g.segment(r * pi.vocab, pi.vocab) -= c * pr.row(r).transpose();
      g(r * pi.vocab + s.y(b, t)) += c;
    }
  return g;
}

}  // namespace

TEST_CASE("returns: GAE(1, lambda) with an exact critic is unbiased for grad(E[R] - beta KL_seq)",
          "[returns][oracle]") {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double beta = 0.3;
  const Index sizes[][2] = {{2, 1}, {3, 2}, {2, 3}, {3, 3}};
  for (const auto& size : sizes) {
    const tabular pi = tabular::random(size[0], size[1], rng), ref = tabular::random(size[0], size[1], rng);
    vector reward(pi.outcomes());
    for (Index i = 0; i < reward.size(); ++i) reward(i) = u(rng);
    const vector target = reward_gradient(pi, reward) - beta * rkl_gradient(pi, ref);
    if (size[1] == 2) {  // the reward gradient itself against finite differences
      const vector fd = finite_difference_gradient(
          of_parameters(pi.vocab, pi.steps, [&](const tabular& p) { return expected_reward(p, reward); }),
          pi.parameter_vector());
      CHECK(relative_error(reward_gradient(pi, reward), fd) < 1e-8);
    }
    const gae_setup s = setup(pi, ref, reward, beta);
    const Index B = s.y.rows(), T = pi.steps;
    const auto layout = klgrad::padded_layout(B, T);
    matrix a(B, T), ret(B, T), g(B, T);
    klgrad::discounted_returns(layout, s.rewards, 1.0, g);
    for (double lambda : {0.0, 0.3, 0.9, 1.0}) {
      INFO("V=" << size[0] << " T=" << size[1] << " lambda=" << lambda);
      klgrad::gae(layout, s.rewards, s.values, 1.0, lambda, a, ret);
      CHECK(relative_error(policy_gradient(pi, s, a), target) < 1e-10);
      // The exact critic makes the returns' mean the critic: E[returns_t | h_t] = V(h_t).
      if (lambda == 1.0) CHECK((ret - g).cwiseAbs().maxCoeff() < 1e-12);
    }
    // REINFORCE with the plain return (no baseline) is unbiased too; a critic of 0 with
    // lambda = 0 (A_t = r_t, the immediate reward only) is not.
    CHECK(relative_error(policy_gradient(pi, s, g), target) < 1e-10);
    if (T >= 2) {
      const matrix zero = matrix::Zero(B, T);
      klgrad::gae(layout, s.rewards, zero, 1.0, 0.0, a, ret);
      CHECK(relative_error(policy_gradient(pi, s, a), target) > 1e-3);
    }
  }
}
