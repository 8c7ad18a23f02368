// Tests of logits.hpp and sampled.hpp: full-vocabulary divergences and gradients against a
// direct two-pass long-double oracle and central differences, extreme logits, temperature,
// top-k, the fused sampled-token paths, shape errors and masked rows.
#include <klgrad/logits.hpp>
#include <klgrad/logits/sampled.hpp>

#include <catch2/catch.hpp>

#include "gradient_over_logits.hpp"
#include "logits_oracle.hpp"

#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace logits_oracle;
using klgrad::divergence;
template <class T>
using rows_t = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::ArrayXd;

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double qnan = std::numeric_limits<double>::quiet_NaN();

// ---- oracle: direct two-pass computation in long double ----

/// sum_j exp(a_j) (a_j - b_j), zero-probability terms dropped.
LD kl_logs(const std::vector<LD>& a, const std::vector<LD>& b) {
  LD v = 0;
  for (std::size_t j = 0; j < a.size(); ++j)
    if (std::exp(a[j]) > 0) v += std::exp(a[j]) * (a[j] - b[j]);
  return v;
}

struct oracle_row {
  LD value;
  std::vector<LD> grad;  ///< d value / d z (closed form)
};

oracle_row oracle(divergence d, const double* z, const double* zr, Index V, LD tau, LD lambda) {
  const auto lp = log_softmax(z, V, tau), lr = log_softmax(zr, V, tau);
  oracle_row o;
  o.grad.assign(std::size_t(V), 0);
  if (d == divergence::reverse_kl) {
    o.value = kl_logs(lp, lr);
    for (std::size_t j = 0; j < lp.size(); ++j)
      if (std::exp(lp[j]) > 0) o.grad[j] = std::exp(lp[j]) * (lp[j] - lr[j] - o.value) / tau;
  } else if (d == divergence::forward_kl) {
    o.value = kl_logs(lr, lp);
    for (std::size_t j = 0; j < lp.size(); ++j) o.grad[j] = (std::exp(lp[j]) - std::exp(lr[j])) / tau;
  } else {
    std::vector<LD> lm(lp.size());
    for (std::size_t j = 0; j < lp.size(); ++j)
      lm[j] = std::log(lambda * std::exp(lr[j]) + (1 - lambda) * std::exp(lp[j]));
    const LD U = kl_logs(lp, lm);
    o.value = lambda * kl_logs(lr, lm) + (1 - lambda) * U;
    for (std::size_t j = 0; j < lp.size(); ++j)
      if (std::exp(lp[j]) > 0)
        o.grad[j] = (1 - lambda) * std::exp(lp[j]) * (lp[j] - lm[j] - U) / tau;
  }
  return o;
}

/// Top-k forward KL: reference renormalised over its k largest (ties: smaller index), policy
/// over the full vocabulary.
oracle_row oracle_top_k(const double* z, const double* zr, Index V, Index k, LD tau,
                        std::vector<Index>* chosen = nullptr) {
  std::vector<Index> order(static_cast<std::size_t>(V));
  for (Index j = 0; j < V; ++j) order[std::size_t(j)] = j;
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return zr[a] > zr[b]; });
  order.resize(std::size_t(k));
  if (chosen) *chosen = order;
  const auto lp = log_softmax(z, V, tau);
  LD m = -INFINITY, s = 0;
  for (Index i : order) m = std::max(m, LD(zr[i]) / tau);
  for (Index i : order) s += std::exp(LD(zr[i]) / tau - m);
  oracle_row o;
  o.value = 0;
  o.grad.assign(std::size_t(V), 0);
  for (Index j = 0; j < V; ++j) o.grad[std::size_t(j)] = std::exp(lp[std::size_t(j)]) / tau;
  for (Index i : order) {
    const LD l = LD(zr[i]) / tau - m - std::log(s), r = std::exp(l);
    if (r > 0) o.value += r * (l - lp[std::size_t(i)]);
    o.grad[std::size_t(i)] -= r / tau;
  }
  return o;
}




template <class A>
void check_rows(divergence d, const Rows& z, const Rows& zr, const A& value, const Rows& grad,
                double tau, double lambda, double tol, double scale = 1.0) {
  for (Index r = 0; r < z.rows(); ++r) {
    const auto o = oracle(d, z.row(r).data(), zr.row(r).data(), z.cols(), tau, lambda);
    INFO("divergence " << klgrad::to_string(d) << " row " << r << " value " << value(r)
                       << " oracle " << double(o.value));
    CHECK(close(value(r), o.value, tol));
    if (grad.size() == 0) continue;
    for (Index j = 0; j < z.cols(); ++j) {
      INFO("column " << j << " grad " << grad(r, j) << " oracle " << double(o.grad[std::size_t(j)]));
      REQUIRE(close(grad(r, j), scale * o.grad[std::size_t(j)], tol));
    }
  }
}

constexpr divergence all_divergences[] = {divergence::reverse_kl, divergence::forward_kl,
                                          divergence::jensen_shannon};

template <class F>
std::string message_of(F f) {
  try {
    f();
  } catch (const klgrad::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("logits: values and gradients match the two-pass oracle in double", "[logits]") {
  // V = 5003 spans several online blocks and a packet tail; rows sorted ascending make the
  // running maximum grow block after block (every rescale path runs).
  for (Index V : {Index(1), Index(7), Index(37), Index(5003)}) {
    Rows z = random_rows(4, V, 3.0, 11), zr = random_rows(4, V, 2.0, 12);
    std::sort(z.row(1).data(), z.row(1).data() + V);
    std::sort(zr.row(2).data(), zr.row(2).data() + V, std::greater<double>());
    for (double tau : {1.0, 0.7, 2.5}) {
      for (divergence d : all_divergences) {
        klgrad::logits_options opt;
        opt.temperature = tau;
        opt.lambda = 0.3;
        opt.aggregation = klgrad::aggregation::token_sum;
        Vec value(4), value_only(4);
        Rows grad(4, V);
        const auto b = klgrad::logit_rows(z, zr);
        const auto s = klgrad::logits_divergence(d, b, value, grad, opt);
        klgrad::logits_divergence(d, b, value_only, opt);
        INFO("V = " << V << ", tau = " << tau);
        check_rows(d, z, zr, value, grad, tau, 0.3, 1e-12);
        CHECK((value == value_only).all());
        CHECK(s.loss == Approx(value.sum()).epsilon(1e-14));
        CHECK(s.rows == 4);
      }
    }
  }
}

TEST_CASE("logits: forward KL and Jensen-Shannon with a workspace match the long-double "
          "oracle and the path without one", "[logits][workspace]") {
  // Rows over several 8 KiB blocks (double: 1,024 entries each) and a packet tail; row 1
  // rises (a re-shift in every block), row 2 has -inf blocks first and then entries far
  // below 0 in the row the first pass takes as x (z for Jensen-Shannon, z_ref for forward
  // KL; the blocks kept before the row started carry the shift 0: their factor is capped),
  // row 3 is ordinary but for -inf reference entries.
  for (divergence d : {divergence::forward_kl, divergence::jensen_shannon}) {
    for (Index V : {Index(1), Index(7), Index(5003)}) {
      Rows z = random_rows(4, V, 3.0, 21), zr = random_rows(4, V, 2.0, 22);
      Rows& x = d == divergence::forward_kl ? zr : z;
      std::sort(z.row(1).data(), z.row(1).data() + V);
      for (Index j = 0; j < V; ++j) {
        if (j < V / 2) x(2, j) = -inf;
        else x(2, j) -= 1000;
        if (j % 5 == 0 && j > 0) zr(3, j) = -inf;
      }
      std::vector<double> work(std::size_t(klgrad::logits_workspace_size<double>(V)));
      for (double tau : {1.0, 0.7}) {
        for (double lambda : {0.1, 0.5, 0.9}) {
          if (d == divergence::forward_kl && lambda != 0.5) continue;
          klgrad::logits_options opt, with;
          opt.temperature = with.temperature = tau;
          opt.lambda = with.lambda = lambda;
          opt.aggregation = with.aggregation = klgrad::aggregation::token_sum;
          with.workspace = work.data();
          with.workspace_size = Index(work.size());
          Vec value(4), plain(4), value_only(4);
          Rows grad(4, V), plain_grad(4, V);
          const auto b = klgrad::logit_rows(z, zr);
          const auto s = klgrad::logits_divergence(d, b, value, grad, with);
          klgrad::logits_divergence(d, b, value_only, with);
          klgrad::logits_divergence(d, b, plain, plain_grad, opt);
          INFO(klgrad::to_string(d) << ", V = " << V << ", tau = " << tau
                                    << ", lambda = " << lambda);
          check_rows(d, z, zr, value, grad, tau, lambda, 1e-12);
          CHECK((value == value_only).all());
          for (Index r = 0; r < 4; ++r) CHECK(value(r) == Approx(plain(r)).epsilon(1e-13));
          CHECK(s.loss == Approx(value.sum()).epsilon(1e-14));
        }
      }
    }
  }
  // float: the workspace path against the path without one.
  const Index V = 151936 / 16;
  Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> z(3, V), zr(3, V),
      grad(3, V), plain_grad(3, V);
  z = random_rows(3, V, 3.0, 23).cast<float>();
  zr = random_rows(3, V, 2.0, 24).cast<float>();
  std::vector<float> work(std::size_t(klgrad::logits_workspace_size<float>(V)));
  CHECK(klgrad::jensen_shannon_workspace_size<float>(V) == Index(work.size()));  // old name
  klgrad::logits_options with;
  with.workspace = work.data();
  with.workspace_size = Index(work.size());
  Eigen::ArrayXf value(3), plain(3);
  const auto b = klgrad::logit_rows(z, zr);
  for (divergence d : {divergence::forward_kl, divergence::jensen_shannon}) {
    INFO(klgrad::to_string(d));
    klgrad::logits_divergence(d, b, value, grad, with);
    klgrad::logits_divergence(d, b, plain, plain_grad);
    for (Index r = 0; r < 3; ++r) CHECK(value(r) == Approx(plain(r)).epsilon(1e-5));
    CHECK(((grad - plain_grad).abs() <= 1e-5f * plain_grad.abs().maxCoeff()).all());
  }
  // The kernels use the workspace where uses_workspace says (it holds exponentials after
  // the call) and leave it alone elsewhere. Reverse KL takes no kept exponentials: the same
  // bits with a workspace as without.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (divergence d : all_divergences) {
    for (bool gradient : {false, true}) {
      INFO(klgrad::to_string(d) << (gradient ? ", value and gradient" : ", value"));
      std::fill(work.begin(), work.end(), nan);
      if (gradient) klgrad::logits_divergence(d, b, value, grad, with);
      else klgrad::logits_divergence(d, b, value, with);
      CHECK(klgrad::uses_workspace(d, with, gradient) == !std::isnan(work[0]));
    }
  }
  klgrad::logits_options log_probs;
  log_probs.log_probs = true;
  CHECK_FALSE(klgrad::uses_workspace(divergence::jensen_shannon, log_probs, true));
  klgrad::logits_divergence(divergence::reverse_kl, b, value, grad, with);
  klgrad::logits_divergence(divergence::reverse_kl, b, plain, plain_grad);
  CHECK((value == plain).all());
  CHECK((grad == plain_grad).all());
  // Too small a workspace is refused whatever the divergence, naming the sizes.
  with.workspace_size = Index(work.size()) - 1;
  for (divergence d : all_divergences) {
    INFO(klgrad::to_string(d));
    const std::string msg =
        message_of([&] { klgrad::logits_divergence(d, b, value, with); });
    CHECK(msg.find("logits_options.workspace_size = " + std::to_string(work.size() - 1)) !=
          std::string::npos);
    CHECK(msg.find("need " + std::to_string(work.size())) != std::string::npos);
  }
}

TEST_CASE("logits: a maximum rising across blocks re-shifts the online sums", "[logits]") {
  // Ramps from -1000 to 1000 over 20,011 entries: every block's maximum is far above the
  // previous shift, so each block is re-shifted and redone; -inf blocks come first in row 2.
  const Index V = 20011;
  Rows z(3, V), zr(3, V);
  for (Index j = 0; j < V; ++j) {
    const double ramp = -1000 + 2000 * double(j) / double(V - 1);
    z(0, j) = ramp, zr(0, j) = -ramp;
    z(1, j) = ramp, zr(1, j) = ramp + std::sin(double(j));
    z(2, j) = j < 9000 ? -inf : ramp, zr(2, j) = j < 5000 ? -inf : 0.5 * ramp;
  }
  for (divergence d : all_divergences) {
    klgrad::logits_options opt;
    opt.aggregation = klgrad::aggregation::token_sum;
    Vec value(3);
    Rows grad(3, V);
    klgrad::logits_divergence(d, klgrad::logit_rows(z, zr), value, grad, opt);
    check_rows(d, z, zr, value, grad, 1, 0.5, 1e-12);
    // float: the same re-shifts, to float accuracy
    const rows_t<float> zf = z.cast<float>(), zrf = zr.cast<float>();
    Eigen::ArrayXf vf(3);
    rows_t<float> gf(3, V);
    klgrad::logits_divergence(d, klgrad::logit_rows(zf, zrf), vf, gf, opt);
    for (Index r = 0; r < 3; ++r) {
      INFO(klgrad::to_string(d) << " float row " << r);
      CHECK(close(double(vf(r)), value(r), 1e-3));  // FKL of row 2 is +inf in both
    }
    CHECK(gf.allFinite());
  }
  Vec logp(3);
  const Eigen::Array3i ids(V - 1, 0, V / 2);
  klgrad::selective_log_softmax(z, ids, logp);
  for (Index r = 0; r < 3; ++r)
    CHECK(close(logp(r), log_softmax(z.row(r).data(), V, 1)[std::size_t(ids(r))], 1e-12));
}

TEST_CASE("logits: closed-form gradients equal central differences", "[logits]") {
  const Index V = 9;
  const Rows z = random_rows(2, V, 1.5, 21), zr = random_rows(2, V, 1.5, 22);
  const double tau = 0.8, lambda = 0.35;
  for (divergence d : all_divergences) {
    Vec value(2);
    Rows grad(2, V);
    klgrad::logits_options opt;
    opt.temperature = tau;
    opt.lambda = lambda;
    opt.aggregation = klgrad::aggregation::token_sum;
    klgrad::logits_divergence(d, klgrad::logit_rows(z, zr), value, grad, opt);
    for (Index r = 0; r < 2; ++r) {
      const std::vector<double> zrow(z.row(r).data(), z.row(r).data() + V);
      const auto fd = central_differences(zrow, [&](const std::vector<double>& x) {
        return oracle(d, x.data(), zr.row(r).data(), V, tau, lambda).value;
      });
      const auto o = oracle(d, zrow.data(), zr.row(r).data(), V, tau, lambda);
      for (Index j = 0; j < V; ++j) {
        INFO(klgrad::to_string(d) << " row " << r << " column " << j);
        CHECK(close(double(o.grad[std::size_t(j)]), fd[std::size_t(j)], 1e-12));
        CHECK(close(grad(r, j), fd[std::size_t(j)], 1e-12));
      }
    }
  }
  // Top-k: the gradient of the top-k objective (the set K held fixed, no ties nearby).
  for (Index k : {Index(1), Index(4), V}) {
    Vec value(2);
    Rows grad(2, V);
    Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> idx(2, k);
    klgrad::logits_options opt;
    opt.temperature = tau;
    opt.aggregation = klgrad::aggregation::token_sum;
    klgrad::forward_kl_top_k(klgrad::logit_rows(z, zr), idx, value, grad, opt);
    for (Index r = 0; r < 2; ++r) {
      const std::vector<double> zrow(z.row(r).data(), z.row(r).data() + V);
      const auto fd = central_differences(zrow, [&](const std::vector<double>& x) {
        return oracle_top_k(x.data(), zr.row(r).data(), V, k, tau).value;
      });
      const auto o = oracle_top_k(zrow.data(), zr.row(r).data(), V, k, tau);
      CHECK(close(value(r), o.value, 1e-12));
      for (Index j = 0; j < V; ++j) {
        INFO("top-" << k << " row " << r << " column " << j);
        CHECK(close(grad(r, j), fd[std::size_t(j)], 1e-12));
      }
    }
  }
}

TEST_CASE("logits: aggregation scales the gradient by beta * a_{b,t}, masked rows never read",
          "[logits]") {
  const Index B = 3, T = 4, V = 50;
  Rows z = random_rows(B * T, V, 2.0, 31), zr = random_rows(B * T, V, 2.0, 32);
  Rows mask(B, T);
  mask << 1, 1, 0, 0,  //
      0, 0, 0, 0,      //
      1, 1, 1, 0;
  for (Index r = 0; r < B * T; ++r)
    if (mask(r / T, r % T) == 0) z.row(r).setConstant(qnan), zr.row(r).setConstant(qnan);
  for (auto mode : klgrad::all_aggregations) {
    for (divergence d : all_divergences) {
      klgrad::logits_options opt;
      opt.aggregation = mode;
      // Every constant the mode takes, away from its default.
      auto& k = opt.aggregation_constants;
      k.norm = klgrad::uses_norm(mode) ? 8.0 : 0.0;
      k.eps = klgrad::uses_batch_count(mode) ? 0.5 : 0.0;
      k.seq_eps = klgrad::uses_sequence_count(mode) ? 0.25 : 0.0;
      k.scale = 3.0;
      opt.beta = 0.04;
      Rows value(B, T), grad(B * T, V);
      value.setConstant(7);
      grad.setConstant(7);
      const auto s = klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value, grad, opt);
      CHECK(s.rows == 5);
      CHECK(s.sequences == 2);
      double loss = 0;
      for (Index r = 0; r < B * T; ++r) {
        const Index b = r / T;
        if (mask(b, r % T) == 0) {
          CHECK(value(b, r % T) == 0);
          CHECK((grad.row(r) == 0).all());
          continue;
        }
        const Index n_b = (mask.row(b) != 0).count();
        // a_{b,t} in closed form (SPEC's table of modes), 5 valid rows in 2 sequences
        const double nonempty = 2 + k.eps, a = k.scale * [&] {
          switch (mode) {
            case klgrad::aggregation::token_mean: return 1 / (5 + k.eps);
            case klgrad::aggregation::token_sum: return 1.0;
            case klgrad::aggregation::token_sum_norm: return 1 / 8.0;
            case klgrad::aggregation::seq_mean_token_sum: return 1 / nonempty;
            case klgrad::aggregation::seq_mean_token_mean: return 1 / (nonempty * (double(n_b) + k.seq_eps));
            case klgrad::aggregation::seq_mean_token_sum_norm: return 1 / (nonempty * 8.0);
          }
          return 0.0;
        }();
        const auto o = oracle(d, z.row(r).data(), zr.row(r).data(), V, 1, 0.5);
        CHECK(close(value(b, r % T), o.value, 1e-12));
        loss += 0.04 * a * double(o.value);
        for (Index j = 0; j < V; ++j)
          REQUIRE(close(grad(r, j), 0.04 * a * o.grad[std::size_t(j)], 1e-12));
      }
      CHECK(s.loss == Approx(loss).epsilon(1e-12));
    }
  }
  // Global counts (a data-parallel shard) replace the local ones.
  klgrad::logits_options opt;
  opt.counts.tokens = 20;
  Rows value(B, T), grad(B * T, V);
  klgrad::logits_divergence(divergence::forward_kl, klgrad::logit_rows(z, zr, mask), value, grad,
                            opt);
  const auto o = oracle(divergence::forward_kl, z.row(0).data(), zr.row(0).data(), V, 1, 0.5);
  CHECK(close(grad(0, 3), o.grad[3] / 20, 1e-12));
}

TEST_CASE("logits: log-probability input gives the logits' results", "[logits]") {
  const Index V = 300;
  Rows z = random_rows(3, V, 2.0, 41), zr = random_rows(3, V, 2.0, 42);
  z(1, 5) = -inf;  // a masked vocabulary entry in both
  zr(1, 5) = -inf;
  Rows lz(3, V), lzr(3, V);
  for (Index r = 0; r < 3; ++r) {
    const auto a = log_softmax(z.row(r).data(), V, 1), b = log_softmax(zr.row(r).data(), V, 1);
    for (Index j = 0; j < V; ++j) lz(r, j) = double(a[std::size_t(j)]), lzr(r, j) = double(b[std::size_t(j)]);
  }
  for (divergence d : all_divergences) {
    klgrad::logits_options opt;
    opt.log_probs = true;
    opt.aggregation = klgrad::aggregation::token_sum;
    Vec value(3);
    Rows grad(3, V);
    klgrad::logits_divergence(d, klgrad::logit_rows(lz, lzr), value, grad, opt);
    check_rows(d, lz, lzr, value, grad, 1, 0.5, 1e-12);
    opt.temperature = 2;
    CHECK_THROWS_AS(klgrad::logits_divergence(d, klgrad::logit_rows(lz, lzr), value, opt),
                    klgrad::input_error);
  }
  Vec value(3);
  Rows grad(3, V);
  Eigen::Array<long, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> idx(3, 10);
  klgrad::logits_options opt;
  opt.log_probs = true;
  opt.aggregation = klgrad::aggregation::token_sum;
  klgrad::forward_kl_top_k(klgrad::logit_rows(lz, lzr), idx, value, grad, opt);
  for (Index r = 0; r < 3; ++r)
    CHECK(close(value(r), oracle_top_k(z.row(r).data(), zr.row(r).data(), V, 10, 1).value, 1e-12));
}

TEST_CASE("logits: extreme logits", "[logits]") {
  const Index V = 40;
  Rows z = random_rows(6, V, 1.0, 51), zr = random_rows(6, V, 1.0, 52);
  // +-1e4 logits
  z(0, 3) = 1e4, z(0, 4) = -1e4, zr(0, 3) = -1e4, zr(0, 9) = 1e4;
  z(1, 0) = 1e4, zr(1, 0) = 1e4 - 0.5, z(1, 1) = 1e4 - 1, zr(1, 1) = 1e4;
  // -inf entries shared by both (a masked vocabulary)
  for (Index j = 10; j < 30; ++j) z(2, j) = zr(2, j) = -inf;
  // a single finite entry in each, the same one
  z.row(3).setConstant(-inf), zr.row(3).setConstant(-inf), z(3, 17) = 5, zr(3, 17) = -300;
  // all equal
  z.row(4).setConstant(123.5), zr.row(4).setConstant(-7);
  // every entry -inf but one in blocks far apart: +-1e4 and -inf together
  z(5, 0) = -inf, zr(5, 1) = -inf, z(5, 1) = -inf, z(5, 2) = -1e4, zr(5, 0) = -inf;
  for (double tau : {1.0, 0.5}) {
    for (divergence d : all_divergences) {
      klgrad::logits_options opt;
      opt.temperature = tau;
      opt.aggregation = klgrad::aggregation::token_sum;
      Vec value(6);
      Rows grad(6, V);
      klgrad::logits_divergence(d, klgrad::logit_rows(z, zr), value, grad, opt);
      INFO("tau " << tau);
      check_rows(d, z, zr, value, grad, tau, 0.5, 1e-12);
      CHECK(value(3) == 0);
      CHECK((grad.row(3) == 0).all());
      CHECK(std::abs(value(4)) < 1e-15);
      CHECK((grad.row(4).abs() < 1e-15).all());
      CHECK(grad.allFinite());
    }
  }
  // float: the same rows in single precision stay finite and close.
  const rows_t<float> zf = z.cast<float>(), zrf = zr.cast<float>();
  for (divergence d : all_divergences) {
    Eigen::ArrayXf vf(6);
    rows_t<float> gf(6, V);
    klgrad::logits_options opt;
    opt.aggregation = klgrad::aggregation::token_sum;
    klgrad::logits_divergence(d, klgrad::logit_rows(zf, zrf), vf, gf, opt);
    CHECK(gf.allFinite());
    for (Index r = 0; r < 6; ++r) {
      const auto o = oracle(d, z.row(r).data(), zr.row(r).data(), V, 1, 0.5);
      INFO(klgrad::to_string(d) << " float row " << r);
      CHECK(std::abs(double(vf(r)) - double(o.value)) <= 2e-5 * std::max(1.0, double(o.value)));
      // 1e4 in float has ulp 1e-3: such rows agree only to that rounding of the inputs.
      const double tol = r <= 1 ? 1e-3 : 1e-5;
      for (Index j = 0; j < V; ++j) CHECK(std::abs(double(gf(r, j)) - double(o.grad[std::size_t(j)])) <= tol);
    }
  }
}

TEST_CASE("logits: infinite divergences and invalid rows", "[logits]") {
  const Index V = 12;
  Rows z = random_rows(3, V, 1.0, 61), zr = random_rows(3, V, 1.0, 62);
  zr(1, 4) = -inf;  // ref gives zero mass where pi has some: RKL = inf, FKL finite
  z(2, 6) = -inf;   // pi gives zero mass where ref has some: FKL = inf, RKL finite
  Vec value(3);
  Rows grad(3, V);
  const auto b = klgrad::logit_rows(z, zr);
  klgrad::logits_options sum;
  sum.aggregation = klgrad::aggregation::token_sum;
  klgrad::logits_divergence(divergence::reverse_kl, b, value);
  CHECK(value(1) == inf);
  CHECK(std::isfinite(value(2)));
  const std::string msg = message_of([&] {
    klgrad::logits_divergence(divergence::reverse_kl, b, value, grad);
  });
  CHECK(msg.find("row 1") != std::string::npos);
  CHECK(msg.find("RKL = +inf") != std::string::npos);
  klgrad::logits_divergence(divergence::forward_kl, b, value, grad, sum);
  CHECK(value(2) == inf);
  CHECK(std::isfinite(value(1)));
  CHECK(grad.allFinite());
  check_rows(divergence::forward_kl, z, zr, value, grad, 1, 0.5, 1e-12);
  klgrad::logits_divergence(divergence::jensen_shannon, b, value, grad, sum);
  CHECK(value.allFinite());
  check_rows(divergence::jensen_shannon, z, zr, value, grad, 1, 0.5, 1e-12);

  // A row of all -inf is an input_error naming the row; so are NaN and +inf entries.
  Rows bad = z;
  bad.row(1).setConstant(-inf);
  for (divergence d : all_divergences) {
    const std::string m1 = message_of([&] {
      klgrad::logits_divergence(d, klgrad::logit_rows(bad, zr), value);
    });
    CHECK(m1.find("z row 1 has no finite entry") != std::string::npos);
    const std::string m2 = message_of([&] {
      klgrad::logits_divergence(d, klgrad::logit_rows(z, bad), value, grad);
    });
    CHECK(m2.find("z_ref row 1 has no finite entry") != std::string::npos);
  }
  Rows with_nan = zr;
  with_nan(2, 7) = qnan;
  const std::string m3 = message_of([&] {
    klgrad::logits_divergence(divergence::forward_kl, klgrad::logit_rows(z, with_nan), value);
  });
  CHECK(m3.find("z_ref row 2, column 7 is nan") != std::string::npos);
  Rows with_inf = z;
  with_inf(0, 2) = inf;
  const std::string m4 = message_of([&] {
    klgrad::logits_divergence(divergence::jensen_shannon, klgrad::logit_rows(with_inf, zr), value);
  });
  CHECK(m4.find("z row 0, column 2 is inf") != std::string::npos);
  klgrad::logits_options cold;
  cold.temperature = 0;
  CHECK_THROWS_AS(klgrad::logits_divergence(divergence::reverse_kl, b, value, cold),
                  klgrad::input_error);
  for (double lambda : {0.0, 1.0, -0.5, qnan}) {
    klgrad::logits_options opt;
    opt.lambda = lambda;
    CHECK_THROWS_AS(klgrad::logits_divergence(divergence::jensen_shannon, b, value, opt),
                    klgrad::input_error);
  }
  // Aggregation constants: the spec's rules, named by the struct's fields.
  const auto bad_constants = [&](klgrad::aggregation mode, auto set) {
    klgrad::logits_options opt;
    opt.aggregation = mode;
    set(opt.aggregation_constants);
    return message_of([&] { klgrad::logits_divergence(divergence::forward_kl, b, value, opt); });
  };
  using klgrad::aggregation;
  using K = klgrad::aggregation_constants;
  CHECK(bad_constants(aggregation::token_sum_norm, [](K&) {}) ==
        "logits_options: aggregation=token-sum-norm needs aggregation_constants.norm=L with "
        "L > 0 (the fixed length it divides by)");
  CHECK(bad_constants(aggregation::token_mean, [](K& k) { k.norm = 8; })
            .find("aggregation_constants.norm=L applies only to aggregation=token-sum-norm") !=
        std::string::npos);
  CHECK(bad_constants(aggregation::token_mean, [](K& k) { k.eps = -1; }) ==
        "logits_options: aggregation_constants.eps=-1 must be >= 0");
  CHECK(bad_constants(aggregation::token_sum, [](K& k) { k.eps = 1e-8; })
            .find("aggregation=token-sum divides by none") != std::string::npos);
  CHECK(bad_constants(aggregation::token_mean, [](K& k) { k.seq_eps = 0.5; })
            .find("aggregation_constants.seq_eps=E is added to a sequence's token count") !=
        std::string::npos);
  CHECK(bad_constants(aggregation::token_mean, [](K& k) { k.scale = qnan; }) ==
        "logits_options: aggregation_constants.scale=nan must be > 0 (use beta=0 to switch "
        "the term off)");
  CHECK(bad_constants(aggregation::seq_mean_token_mean, [](K& k) { k.seq_eps = inf; }) ==
        "logits_options: aggregation_constants.seq_eps=inf must be finite");
}

TEST_CASE("logits: generalised JSD tends to lambda * FKL and (1 - lambda) * RKL", "[logits]") {
  const Index V = 30;
  const Rows z = random_rows(2, V, 1.0, 71), zr = random_rows(2, V, 1.0, 72);
  const auto b = klgrad::logit_rows(z, zr);
  Vec jsd(2), rkl(2), fkl(2);
  Rows gj(2, V), gr(2, V), gf(2, V);
  klgrad::logits_options opt;
  opt.aggregation = klgrad::aggregation::token_sum;
  klgrad::logits_divergence(divergence::reverse_kl, b, rkl, gr, opt);
  klgrad::logits_divergence(divergence::forward_kl, b, fkl, gf, opt);
  const double eps = 1e-6;
  opt.lambda = eps;
  klgrad::logits_divergence(divergence::jensen_shannon, b, jsd, gj, opt);
  CHECK(((jsd / eps - fkl).abs() < 1e-5 * fkl.abs()).all());
  CHECK(((gj / eps - gf).abs() < 1e-5).all());
  opt.lambda = 1 - eps;
  klgrad::logits_divergence(divergence::jensen_shannon, b, jsd, gj, opt);
  const double w = 1 - opt.lambda;
  CHECK(((jsd / w - rkl).abs() < 1e-5 * rkl.abs()).all());
  CHECK(((gj / w - gr).abs() < 1e-5).all());
  // The symmetric JSD (lambda = 1/2) is symmetric and bounded by log 2.
  opt.lambda = 0.5;
  Vec a(2), c(2);
  klgrad::logits_divergence(divergence::jensen_shannon, b, a, opt);
  klgrad::logits_divergence(divergence::jensen_shannon, klgrad::logit_rows(zr, z), c, opt);
  CHECK(((a - c).abs() < 1e-15).all());
  CHECK((a <= std::log(2.0)).all());
}

TEST_CASE("logits: top-k forward KL edge cases", "[logits]") {
  const Index V = 20;
  Rows z = random_rows(4, V, 1.5, 81), zr = random_rows(4, V, 1.5, 82);
  // ties: row 2 has four equal top reference logits; row 3 is constant.
  zr(2, 3) = zr(2, 8) = zr(2, 11) = zr(2, 15) = 9;
  zr.row(3).setConstant(0.25);
  const auto b = klgrad::logit_rows(z, zr);
  klgrad::logits_options opt;
  opt.aggregation = klgrad::aggregation::token_sum;
  opt.temperature = 1.3;
  for (Index k : {Index(1), Index(2), Index(5), V}) {
    Vec value(4), value_only(4);
    Rows grad(4, V);
    Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> idx(4, k), idx2(4, k);
    klgrad::forward_kl_top_k(b, idx, value, grad, opt);
    klgrad::forward_kl_top_k(b, idx2, value_only, opt);
    CHECK((value == value_only).all());
    CHECK((idx == idx2).all());
    for (Index r = 0; r < 4; ++r) {
      std::vector<Index> chosen;
      const auto o = oracle_top_k(z.row(r).data(), zr.row(r).data(), V, k, 1.3, &chosen);
      INFO("k = " << k << ", row " << r);
      CHECK(value(r) >= 0);
      CHECK(close(value(r), o.value, 1e-12));
      for (Index j = 0; j < k; ++j) CHECK(idx(r, j) == chosen[std::size_t(j)]);
      for (Index j = 0; j < V; ++j) REQUIRE(close(grad(r, j), o.grad[std::size_t(j)], 1e-12));
    }
    if (k == 2) CHECK((idx.row(2) == Eigen::Array2i(3, 8).transpose()).all());
    if (k == 5) CHECK((idx.row(3) == Eigen::Array<int, 1, 5>(0, 1, 2, 3, 4)).all());
    if (k == V) {  // k = V is the forward KL
      Vec f(4);
      Rows gf(4, V);
      klgrad::logits_divergence(divergence::forward_kl, b, f, gf, opt);
      CHECK(((value - f).abs() < 1e-13).all());
      CHECK(((grad - gf).abs() < 1e-15).all());
    }
  }
  // -inf reference entries inside the top k carry no mass; masked rows get index -1.
  Rows zr2 = zr;
  zr2.row(0).setConstant(-inf);
  zr2(0, 4) = 1, zr2(0, 6) = 2;
  Rows mask(4, 1);
  mask << 1, 0, 1, 1;
  Rows z2 = z;
  z2.row(1).setConstant(qnan);
  Vec value(4);
  Rows grad(4, V);
  Eigen::Array<long, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> idx(4, 3);
  klgrad::forward_kl_top_k(klgrad::logit_rows(z2, zr2, mask), idx, value, grad, opt);
  CHECK(idx(0, 0) == 6);
  CHECK(idx(0, 1) == 4);
  CHECK(close(value(0), oracle_top_k(z.row(0).data(), zr2.row(0).data(), V, 3, 1.3).value, 1e-12));
  CHECK((idx.row(1) == -1).all());
  CHECK(value(1) == 0);
  CHECK((grad.row(1) == 0).all());
  // k outside 1..V
  Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> none(4, 0), many(4, V + 1);
  CHECK_THROWS_AS(klgrad::forward_kl_top_k(b, none, value), klgrad::shape_error);
  const std::string msg = message_of([&] { klgrad::forward_kl_top_k(b, many, value); });
  CHECK(msg.find("4x20") != std::string::npos);
  CHECK(msg.find("4x21") != std::string::npos);
}

TEST_CASE("logits: shape errors carry both shapes", "[logits]") {
  const Rows z = random_rows(6, 10, 1.0, 91), zr = random_rows(6, 10, 1.0, 92);
  const Rows small(6, 9), mask(2, 2);
  Vec value(6), short_value(5);
  Rows grad(6, 10), bad_grad(5, 10);
  auto has = [](const std::string& m, const char* a, const char* b) {
    return m.find(a) != std::string::npos && m.find(b) != std::string::npos;
  };
  CHECK(has(message_of([&] { klgrad::logit_rows(z, small); }), "6x10", "6x9"));
  CHECK(has(message_of([&] { klgrad::logit_rows(z, zr, mask); }), "6x10", "2x2"));
  CHECK(has(message_of([&] { klgrad::logit_rows(z, zr, Index(4)); }), "6 rows", "4"));
  const auto b = klgrad::logit_rows(z, zr);
  CHECK(has(message_of([&] {
          klgrad::logits_divergence(divergence::reverse_kl, b, short_value);
        }),
        "6x10", "5x1"));
  CHECK(has(message_of([&] {
          klgrad::logits_divergence(divergence::forward_kl, b, value, bad_grad);
        }),
        "6x10", "5x10"));
  CHECK_THROWS_AS(klgrad::logit_rows(z, small), klgrad::shape_error);
  const Eigen::ArrayXi ids = Eigen::ArrayXi::Zero(5);
  CHECK(has(message_of([&] { klgrad::selective_log_softmax(z, ids, value); }), "6x10", "5x1"));
  const Eigen::ArrayXi ids6 = Eigen::ArrayXi::Zero(6);
  CHECK(has(message_of([&] { klgrad::sampled_logits_gradient(z, ids6, value, bad_grad); }),
            "6x10", "5x10"));
  CHECK(has(message_of([&] { klgrad::selective_log_softmax(z, ids6, value, mask); }), "6x10",
            "2x2"));
  // Column-major logits are refused rather than copied.
  const Eigen::ArrayXXd col = z;
  CHECK_THROWS_AS(klgrad::logit_rows(col, col), klgrad::shape_error);
}

TEST_CASE("sampled: selective log-softmax equals log_softmax then gather", "[logits]") {
  for (Index V : {Index(3), Index(1000), Index(4099)}) {
    Rows z = random_rows(5, V, 4.0, 101);
    z(1, 0) = 1e4, z(1, 2) = -1e4;
    z(2, 1) = -inf;
    Eigen::Array<long, Eigen::Dynamic, 1> ids(5);
    ids << 0, 2, 1, V - 1, V / 2;
    for (double tau : {1.0, 0.6}) {
      Vec logp(5);
      klgrad::selective_log_softmax(z, ids, logp, tau);
      for (Index r = 0; r < 5; ++r) {
        const auto l = log_softmax(z.row(r).data(), V, tau);
        INFO("V " << V << " row " << r << " tau " << tau);
        CHECK(close(logp(r), l[std::size_t(ids(r))], 1e-12));
      }
      CHECK(logp(2) == -inf);
    }
  }
  // float against double
  const Rows z = random_rows(4, 32000, 3.0, 102);
  const rows_t<float> zf = z.cast<float>();
  const Eigen::ArrayXi ids = (Eigen::ArrayXi(4) << 5, 31999, 0, 17000).finished();
  Eigen::ArrayXf lf(4);
  Vec ld(4);
  klgrad::selective_log_softmax(zf, ids, lf);
  klgrad::selective_log_softmax(zf.cast<double>().eval(), ids, ld);
  CHECK(((lf.cast<double>() - ld).abs() < 1e-5).all());
}

TEST_CASE("sampled: coefficients back-propagate as coef * (onehot - softmax) / tau",
          "[logits]") {
  const Index B = 2, T = 3, V = 1037;
  Rows z = random_rows(B * T, V, 2.0, 111);
  z(0, 7) = -inf;
  Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> ids(B, T);
  ids << 3, 7, 1036, 0, 500, 2;
  Rows coef(B, T);
  coef << 0.5, -2, 0.01, 0, 1e-3, -0.7;
  for (double tau : {1.0, 1.7}) {
    Rows grad(B * T, V);
    klgrad::sampled_logits_gradient(z, ids, coef, grad, tau);
    for (Index r = 0; r < B * T; ++r) {
      const auto l = log_softmax(z.row(r).data(), V, tau);
      const LD c = coef(r / T, r % T);
      for (Index j = 0; j < V; ++j) {
        const LD expect = c * ((j == ids(r / T, r % T) ? 1 : 0) - std::exp(l[std::size_t(j)])) / tau;
        REQUIRE(close(grad(r, j), expect, 1e-12));
      }
    }
    // The same as differentiating coef * logp: central differences of the oracle's logp.
    const std::vector<double> row(z.row(4).data(), z.row(4).data() + 8);
    const auto fd = central_differences(row, [&](const std::vector<double>& x) {
      return LD(coef(1, 1)) * log_softmax(x.data(), 8, tau)[std::size_t(ids(1, 1)) % 8];
    });
    Rows g8(1, 8);
    Eigen::ArrayXi id8(1);
    id8 << ids(1, 1) % 8;
    Vec c8(1);
    c8 << coef(1, 1);
    klgrad::sampled_logits_gradient(Eigen::Map<const Rows>(row.data(), 1, 8), id8, c8, g8, tau);
    for (Index j = 0; j < 8; ++j) CHECK(close(g8(0, j), fd[std::size_t(j)], 1e-12));
  }
  // Masked rows: never read (NaN logits, NaN coef, out-of-range ids), zero gradient.
  Rows mask(B, T);
  mask << 1, 0, 1, 1, 1, 0;
  Rows zn = z, cn = coef;
  zn.row(1).setConstant(qnan);
  cn(0, 1) = qnan;
  ids(1, 2) = -5;
  Rows grad(B * T, V);
  grad.setConstant(3);
  klgrad::sampled_logits_gradient(zn, ids, cn, grad, mask);
  CHECK((grad.row(1) == 0).all());
  CHECK((grad.row(5) == 0).all());
  CHECK(grad.allFinite());
  Rows logp(B, T);
  klgrad::selective_log_softmax(zn, ids, logp, mask);
  CHECK(logp(0, 1) == 0);
  CHECK(logp.allFinite());
  // Unmasked: the bad id and the bad coefficient are reported.
  CHECK(message_of([&] { klgrad::selective_log_softmax(z, ids, logp); }).find("ids row 5") !=
        std::string::npos);
  ids(1, 2) = 2;
  CHECK(message_of([&] { klgrad::sampled_logits_gradient(z, ids, cn, grad); })
            .find("coef row 1 is nan") != std::string::npos);
  CHECK(message_of([&] { klgrad::selective_log_softmax(zn, ids, logp); })
            .find("z row 1, column 0 is nan") != std::string::npos);
}

TEST_CASE("logits: masked rows are never read by any divergence", "[logits]") {
  const Index V = 64;
  Rows z = random_rows(4, V, 1.0, 121), zr = random_rows(4, V, 1.0, 122);
  z.row(2).setConstant(qnan);
  zr.row(2).setConstant(inf);
  z.row(3).setConstant(-inf);
  Eigen::Array<unsigned char, 1, 4> mask;
  mask << 1, 1, 0, 0;
  for (divergence d : all_divergences) {
    Vec value(4);
    Rows grad(4, V);
    const auto s = klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value, grad);
    CHECK(value.allFinite());
    CHECK(grad.allFinite());
    CHECK(s.rows == 2);
    CHECK(value(2) == 0);
  }
}

TEST_CASE("logits: the batch sums are added in row order, with any number of threads",
          "[logits]") {
  // 600 rows (more than one chunk of run_rows) in 6 sequences of 100 with a mask: the mean is
  // the row-order sum of the double values over the valid rows, bit for bit, as the loss is
  // for token-sum with beta 1. With KLGRAD_OPENMP the same holds, and every result is the
  // same bit for bit, with 1, 2 and 3 threads.
  const Index B = 6, T = 100, V = 40;
  const Rows z = random_rows(B * T, V, 2.0, 141), zr = random_rows(B * T, V, 2.0, 142);
  Rows mask(B, T);
  std::mt19937 rng(143);
  for (Index i = 0; i < mask.size(); ++i) mask.data()[i] = rng() % 7 != 0;
  for (divergence d : all_divergences) {
    klgrad::logits_options opt;
    opt.aggregation = klgrad::aggregation::token_sum;
    Rows value(B, T), grad(B * T, V);
    const auto s = klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value, grad, opt);
    double sum = 0;
    for (Index r = 0; r < B * T; ++r)
      if (mask.data()[r] != 0) sum += value.data()[r];
    CHECK(s.loss == sum);
    CHECK(s.mean == sum / double(s.rows));
#if defined(KLGRAD_OPENMP) && defined(_OPENMP)
    const int threads = omp_get_max_threads();
    for (int n : {1, 2, 3}) {
      omp_set_num_threads(n);
      Rows value_n(B, T), grad_n(B * T, V);
      const auto s_n =
          klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value_n, grad_n, opt);
      CHECK(s_n.loss == s.loss);
      CHECK(s_n.mean == s.mean);
      CHECK((value_n == value).all());
      CHECK((grad_n == grad).all());
    }
    omp_set_num_threads(threads);
#endif
  }
}

namespace {

/// Every divergence, with and without the workspace, over a batch_for()
/// batch in T: the gradient over z against the gradient apart. Bit for bit, but for
/// Jensen-Shannon without kept exponentials on rows that do not start at a packet-aligned
/// address and are long enough for streaming stores: over z it computes u = log pi - log M
/// again in the gradient's pass, whose scalar head (before the first aligned packet) takes
/// std::exp / std::log where the value pass took Eigen's packet functions.
template <class T>
void check_divergences_over_z(Index V, bool log_probs, double tau) {
  const auto b = over_logits::batch_for<T>(V, log_probs, 131);
  const bool aligned = V * Index(sizeof(T)) < klgrad::detail::stream_store_bytes ||
                       (V * Index(sizeof(T))) % 64 == 0;
  std::vector<T> work(std::size_t(klgrad::logits_workspace_size<T>(V)));
  for (divergence d : all_divergences) {
    for (bool workspace : {false, true}) {
      INFO(klgrad::to_string(d) << (workspace ? " with" : " without") << " workspace, V = "
                                << V << ", log_probs " << log_probs << ", tau " << tau);
      klgrad::logits_options opt;
      opt.temperature = tau;
      opt.log_probs = log_probs;
      opt.lambda = 0.3;
      if (workspace) opt.workspace = work.data(), opt.workspace_size = Index(work.size());
      const bool kept = workspace && !log_probs;
      over_logits::check_over_z(
          b,
          [&](const auto& batch, auto& value, auto& grad) {
            return klgrad::logits_divergence(d, batch, value, grad, opt);
          },
          aligned || d != divergence::jensen_shannon || kept);
    }
  }
}

}  // namespace

TEST_CASE("logits: the gradient written over z is the gradient written apart",
          "[logits][over-z]") {
  // Packet tails (7, 1029 entries), and rows of 64 KiB and more, written with streaming
  // stores: 16,400 floats / 8,200 doubles (every row aligned to any packet) and 16,387 floats
  // / 8,195 doubles (rows at every offset: a scalar head before the aligned packets).
  over_logits::for_each_setting([](bool log_probs, double tau) {
    for (Index V : {Index(7), Index(1029), Index(16400), Index(16387)})
      check_divergences_over_z<float>(V, log_probs, tau);
    for (Index V : {Index(7), Index(1029), Index(8200), Index(8195)})
      check_divergences_over_z<double>(V, log_probs, tau);
  });
}

TEST_CASE("logits: a gradient that overlaps z or z_ref without being z is refused",
          "[logits][over-z]") {
  const Index N = 4, V = 9;
  Rows buffer = random_rows(N + 1, 2 * V, 1.0, 141), zr = random_rows(N, V, 1.0, 142);
  using Map = Eigen::Map<Rows, Eigen::Unaligned, Eigen::OuterStride<>>;
  const Map z(buffer.data(), N, V, Eigen::OuterStride<>(2 * V));
  Vec value(N);
  auto refused = [&](auto&& grad, const char* why) {
    const std::string msg = message_of([&] {
      klgrad::logits_divergence(divergence::reverse_kl, klgrad::logit_rows(z, zr), value, grad);
    });
    INFO(msg);
    CHECK(msg.find(why) != std::string::npos);
  };
  // Shifted by one entry, or by one row with the same stride; z itself with another stride.
  refused(Map(buffer.data() + 1, N, V, Eigen::OuterStride<>(2 * V)), "without being z itself");
  refused(Map(buffer.data() + 2 * V, N, V, Eigen::OuterStride<>(2 * V)), "without being z itself");
  refused(Map(buffer.data(), N, V, Eigen::OuterStride<>(V)), "row stride 9 against z's 18");
  Eigen::Map<Rows> over_ref(zr.data(), N, V);
  refused(over_ref, "grad overlaps z_ref's memory");
  // Interleaved with z's rows, the gaps between them: no entry shared, accepted.
  Map between(buffer.data() + V, N, V, Eigen::OuterStride<>(2 * V));
  const Rows before = z;
  klgrad::logits_divergence(divergence::reverse_kl, klgrad::logit_rows(z, zr), value, between);
  CHECK((Rows(z) == before).all());
  CHECK(between.allFinite());
}
