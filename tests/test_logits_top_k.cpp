// Tests of logits/top_k.hpp: the four top-k forms against a long-double oracle that sums the
// same k or k + 1 bins from the logits (the tail masses summed directly over the rest of the
// row), gradients against central differences of that oracle with K held fixed, and the
// limits: k = V gives the full FKL / RKL, a tail form is at most the full divergence,
// masked (-inf) vocabulary entries, a top-k mass that rounds to 1, temperature,
// log-probability input, float, masked rows.
#include <klgrad/logits.hpp>

#include <catch2/catch.hpp>

#include "gradient_over_logits.hpp"
#include "logits_oracle.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using namespace logits_oracle;
using klgrad::top_k_form;
using Vec = Eigen::ArrayXd;
using Idx = Eigen::Array<long, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double qnan = std::numeric_limits<double>::quiet_NaN();

/// K: the chooser's k largest entries, ties to the smaller index.
std::vector<Index> top_k_of(const double* x, Index V, Index k) {
  std::vector<Index> order(static_cast<std::size_t>(V));
  for (Index j = 0; j < V; ++j) order[std::size_t(j)] = j;
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return x[a] > x[b]; });
  order.resize(std::size_t(k));
  return order;
}

/// log-softmax of x / tau over the entries in K alone.
std::vector<LD> log_softmax_over(const double* x, const std::vector<Index>& K, LD tau) {
  std::vector<double> sub;
  for (Index i : K) sub.push_back(x[i]);
  return log_softmax(sub.data(), Index(sub.size()), tau);
}

/// The form's value in long double for a given K, straight from the definitions.
LD oracle_value(top_k_form f, const double* z, const double* zr, Index V,
                const std::vector<Index>& K, LD tau) {
  const bool reverse = klgrad::policy_chooses(f);
  const double* a = reverse ? z : zr;  // the chooser: the KL runs from its side
  const double* b = reverse ? zr : z;
  const auto lb = log_softmax(b, V, tau);
  LD value = 0;
  auto add = [&](LD la, LD lbin) {
    if (std::exp(la) > 0) value += std::exp(la) * (la - lbin);
  };
  if (f == top_k_form::forward_kl || f == top_k_form::reverse_kl) {
    const auto la = log_softmax_over(a, K, tau);
    for (std::size_t j = 0; j < K.size(); ++j) add(la[j], lb[std::size_t(K[j])]);
    return value;
  }
  const auto la = log_softmax(a, V, tau);
  std::vector<bool> in(std::size_t(V), false);
  for (Index i : K) in[std::size_t(i)] = true;
  LD rest_a = 0, rest_b = 0;  // the tail masses, summed over the rest directly
  for (Index j = 0; j < V; ++j) {
    const std::size_t u = std::size_t(j);
    if (in[u]) {
      add(la[u], lb[u]);
    } else {
      rest_a += std::exp(la[u]);
      rest_b += std::exp(lb[u]);
    }
  }
  add(std::log(rest_a), std::log(rest_b));
  return value;
}

LD full_value(top_k_form f, const double* z, const double* zr, Index V, LD tau) {
  const auto lp = log_softmax(z, V, tau), lr = log_softmax(zr, V, tau);
  const bool reverse = klgrad::policy_chooses(f);
  LD v = 0;
  for (std::size_t j = 0; j < lp.size(); ++j) {
    const LD la = reverse ? lp[j] : lr[j], lb = reverse ? lr[j] : lp[j];
    if (std::exp(la) > 0) v += std::exp(la) * (la - lb);
  }
  return v;
}

struct run_result {
  Vec value, value_only;
  Rows grad;
  Idx idx, idx_only;
};

run_result run(top_k_form f, const Rows& z, const Rows& zr, Index k, double tau,
               bool log_probs = false) {
  const Index N = z.rows(), V = z.cols();
  run_result r{Vec(N), Vec(N), Rows(N, V), Idx(N, k), Idx(N, k)};
  klgrad::logits_options opt;
  opt.temperature = tau;
  opt.log_probs = log_probs;
  opt.aggregation = klgrad::aggregation::token_sum;
  const auto b = klgrad::logit_rows(z, zr);
  klgrad::top_k_divergence(f, b, r.idx, r.value, r.grad, opt);
  klgrad::top_k_divergence(f, b, r.idx_only, r.value_only, opt);
  return r;
}

}  // namespace

TEST_CASE("top-k forms: values against the long-double oracle, gradients against central "
          "differences",
          "[logits][top-k]") {
  const Index V = 9;
  const Rows z = random_rows(3, V, 1.5, 31), zr = random_rows(3, V, 1.5, 32);
  const double tau = 0.8;
  for (top_k_form f : klgrad::top_k_forms) {
    for (Index k : {Index(1), Index(3), V - 1, V}) {
      const auto r = run(f, z, zr, k, tau);
      CHECK((r.value == r.value_only).all());
      CHECK((r.idx == r.idx_only).all());
      for (Index row = 0; row < z.rows(); ++row) {
        const double* chooser = klgrad::policy_chooses(f) ? z.row(row).data() : zr.row(row).data();
        const auto K = top_k_of(chooser, V, k);
        const std::vector<double> zrow(z.row(row).data(), z.row(row).data() + V);
        const LD o = oracle_value(f, zrow.data(), zr.row(row).data(), V, K, tau);
        INFO(klgrad::to_string(f) << " k = " << k << " row " << row << " value " << r.value(row)
                                  << " oracle " << double(o));
        CHECK(close(r.value(row), o, 1e-12));
        CHECK(r.value(row) >= 0);
        for (Index j = 0; j < k; ++j) CHECK(r.idx(row, j) == K[std::size_t(j)]);
        const auto fd = central_differences(zrow, [&](const std::vector<double>& x) {
          return oracle_value(f, x.data(), zr.row(row).data(), V, K, tau);
        });
        for (Index j = 0; j < V; ++j) {
          INFO("column " << j << " grad " << r.grad(row, j) << " differences "
                         << double(fd[std::size_t(j)]));
          CHECK(close(r.grad(row, j), fd[std::size_t(j)], 1e-11));
        }
      }
    }
  }
}

TEST_CASE("top-k forms: k = V is the full divergence, a tail form is at most it",
          "[logits][top-k]") {
  const Index N = 6, V = 40;
  const Rows z = random_rows(N, V, 2.0, 41), zr = random_rows(N, V, 2.0, 42);
  const double tau = 1.3;
  klgrad::logits_options opt;
  opt.temperature = tau;
  opt.aggregation = klgrad::aggregation::token_sum;
  const auto b = klgrad::logit_rows(z, zr);
  for (top_k_form f : klgrad::top_k_forms) {
    const auto full = klgrad::policy_chooses(f) ? klgrad::divergence::reverse_kl
                                                 : klgrad::divergence::forward_kl;
    Vec fv(N);
    Rows fg(N, V);
    klgrad::logits_divergence(full, b, fv, fg, opt);
    const auto all = run(f, z, zr, V, tau);
    INFO(klgrad::to_string(f));
    CHECK(((all.value - fv).abs() < 1e-13 * fv.abs().max(1.0)).all());
    CHECK(((all.grad - fg).abs() < 1e-15).all());
    const bool tail = f == top_k_form::forward_kl_tail || f == top_k_form::reverse_kl_tail;
    for (Index k = 1; k < V; ++k) {
      const auto r = run(f, z, zr, k, tau);
      for (Index row = 0; row < N; ++row) {
        INFO("k = " << k << " row " << row);
        CHECK(r.value(row) >= 0);
        // Data processing: merging bins cannot raise a KL (here strictly: no two rows
        // are proportional on the merged entries); k = V - 1 merges nothing.
        if (tail && k < V - 1) CHECK(r.value(row) < fv(row));
        if (tail && k == V - 1) CHECK(close(r.value(row), fv(row), 1e-13));
        CHECK(close(fv(row), full_value(f, z.row(row).data(), zr.row(row).data(), V, tau), 1e-12));
      }
    }
  }
}

TEST_CASE("top-k forms: masked vocabulary entries and empty tails", "[logits][top-k]") {
  const Index V = 12;
  Rows z = random_rows(4, V, 1.5, 51), zr = random_rows(4, V, 1.5, 52);
  // row 0: both rows masked at 2, 5 and 9; row 1: only 3 finite chooser entries on either
  // side (k = 5 takes -inf entries into K, ties to the smaller index); row 2: the policy is
  // masked everywhere except 0, 1 (its tail holds no mass for k >= 2); row 3: the
  // reference likewise, at 4, 7.
  for (Index j : {2, 5, 9}) z(0, j) = zr(0, j) = -inf;
  for (Index j = 3; j < V; ++j) z(1, j) = zr(1, j) = -inf;
  for (Index j = 2; j < V; ++j) z(2, j) = -inf;
  for (Index j = 0; j < V; ++j)
    if (j != 4 && j != 7) zr(3, j) = -inf;
  const double tau = 0.9;
  for (top_k_form f : klgrad::top_k_forms) {
    for (Index k : {Index(1), Index(2), Index(5), V}) {
      Vec value(4);
      Idx idx(4, k);
      klgrad::logits_options opt;
      opt.temperature = tau;
      klgrad::top_k_divergence(f, klgrad::logit_rows(z, zr), idx, value, opt);
      for (Index row = 0; row < 4; ++row) {
        const double* chooser = klgrad::policy_chooses(f) ? z.row(row).data() : zr.row(row).data();
        const auto K = top_k_of(chooser, V, k);
        const LD o = oracle_value(f, z.row(row).data(), zr.row(row).data(), V, K, tau);
        INFO(klgrad::to_string(f) << " k = " << k << " row " << row << " value " << value(row)
                                  << " oracle " << double(o));
        CHECK(close(value(row), o, 1e-12));
        for (Index j = 0; j < k; ++j) CHECK(idx(row, j) == K[std::size_t(j)]);
      }
    }
  }
  // Where the other side gives a bin no mass the value is +inf: the forward gradient stays
  // finite (pi - ref on K, pi - R pi / P off K), the reverse one is refused naming the row.
  // forward tail, k = 1: K = {4} of row 3's reference, where row 2's policy has no mass.
  Rows zp(1, V), zq(1, V);
  zp = z.row(2);
  zq = zr.row(3);
  zq(0, 4) = zq(0, 7) + 1;
  Vec value(1);
  Rows grad(1, V);
  Idx idx(1, 1);
  klgrad::top_k_divergence(top_k_form::forward_kl_tail, klgrad::logit_rows(zp, zq), idx, value,
                           grad, {});
  CHECK(idx(0, 0) == 4);
  CHECK(value(0) == inf);
  CHECK(grad.allFinite());
  const auto lp = log_softmax(zp.data(), V, 1), lr = log_softmax(zq.data(), V, 1);
  const LD R = 1 - std::exp(lr[4]), P = 1 - std::exp(lp[4]);
  for (Index j = 0; j < V; ++j) {
    const std::size_t u = std::size_t(j);
    const LD expect = j == 4 ? std::exp(lp[u]) - std::exp(lr[u]) : std::exp(lp[u]) * (1 - R / P);
    CHECK(close(grad(0, j), expect, 1e-14));
  }
  // reverse tail, k = 2: K = {4, 7} holds all the reference's mass, the policy's tail bin
  // has some.
  Rows zs = random_rows(1, V, 1.0, 53);
  zs(0, 4) = zs(0, 7) = 5;
  Idx idx2(1, 2);
  const std::string msg = [&] {
    try {
      klgrad::top_k_divergence(top_k_form::reverse_kl_tail, klgrad::logit_rows(zs, zq), idx2,
                               value, grad, {});
    } catch (const klgrad::input_error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  CHECK(msg.find("z_ref row 0") != std::string::npos);
  klgrad::top_k_divergence(top_k_form::reverse_kl_tail, klgrad::logit_rows(zs, zq), idx2, value, {});
  CHECK(value(0) == inf);
}

TEST_CASE("top-k forms: a top-k mass that rounds to 1 keeps its tail exact", "[logits][top-k]") {
  // pi(K) = 1 - ~1e-20: 1 - pi(K) and log(-expm1(log pi(K))) are both 0 / -inf in double,
  // but the tail bins hold ~1e-20 (policy) and ~1e-3 (reference), and the forward tail
  // term R log(R / P) ~ 0.04 dominates the value.
  const Index V = 30;
  Rows z = random_rows(2, V, 1.0, 61), zr = random_rows(2, V, 1.0, 62);
  z(0, 7) = z(1, 7) = 50;
  zr(0, 7) = zr(1, 7) = 7;
  const double tau = 1;
  for (top_k_form f : {top_k_form::forward_kl_tail, top_k_form::reverse_kl_tail}) {
    const auto r = run(f, z, zr, 1, tau);
    for (Index row = 0; row < 2; ++row) {
      const std::vector<double> zrow(z.row(row).data(), z.row(row).data() + V);
      const std::vector<Index> K{7};
      const LD o = oracle_value(f, zrow.data(), zr.row(row).data(), V, K, tau);
      INFO(klgrad::to_string(f) << " row " << row << " value " << r.value(row) << " oracle "
                                << double(o));
      CHECK(r.idx(row, 0) == 7);
      CHECK(close(r.value(row), o, 1e-12));
      // Closed form of the gradient in long double (the differences cannot resolve 1e-20):
      // forward off K: pi_j - R pi_j / P; reverse off K: pi_j (log P - log R - value).
      const auto lp = log_softmax(zrow.data(), V, tau), lr = log_softmax(zr.row(row).data(), V, tau);
      LD P = 0, R = 0;
      for (Index j = 0; j < V; ++j)
        if (j != 7) P += std::exp(lp[std::size_t(j)]), R += std::exp(lr[std::size_t(j)]);
      for (Index j = 0; j < V; ++j) {
        const std::size_t u = std::size_t(j);
        const LD p = std::exp(lp[u]);
        LD expect;
        if (f == top_k_form::forward_kl_tail)
          expect = j == 7 ? p - std::exp(lr[u]) : p - R * p / P;
        else
          expect = j == 7 ? p * (lp[u] - lr[u] - o) : p * (std::log(P) - std::log(R) - o);
        INFO("column " << j << " grad " << r.grad(row, j) << " expect " << double(expect));
        // Off K relative to the tiny gradient itself; on K, where the reverse gradient is a
        // cancellation of O(1) terms, to a few ulps of them.
        if (j == 7)
          CHECK(std::abs(LD(r.grad(row, j)) - expect) <= 1e-15L);
        else
          CHECK(std::abs(LD(r.grad(row, j)) - expect) <= 1e-12L * std::abs(expect));
      }
    }
  }
}

TEST_CASE("top-k forms: log-probability input, float, masked rows", "[logits][top-k]") {
  const Index V = 300, k = 17;
  Rows z = random_rows(4, V, 2.0, 71), zr = random_rows(4, V, 2.0, 72);
  z(2, 10) = zr(2, 11) = -inf;
  Rows lz(4, V), lzr(4, V);
  for (Index r = 0; r < 4; ++r) {
    const auto a = log_softmax(z.row(r).data(), V, 1), b = log_softmax(zr.row(r).data(), V, 1);
    for (Index j = 0; j < V; ++j) lz(r, j) = double(a[std::size_t(j)]), lzr(r, j) = double(b[std::size_t(j)]);
  }
  using Rowsf = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Rowsf zf = z.cast<float>(), zrf = zr.cast<float>();
  for (top_k_form f : klgrad::top_k_forms) {
    INFO(klgrad::to_string(f));
    const auto r = run(f, z, zr, k, 1.0);
    const auto l = run(f, lz, lzr, k, 1.0, true);
    CHECK((r.idx == l.idx).all());
    CHECK(((r.value - l.value).abs() < 1e-12).all());
    CHECK(((r.grad - l.grad).abs() < 1e-14).all());
    // float: the same K, values and gradients to float's precision
    Eigen::ArrayXf vf(4);
    Rowsf gf(4, V);
    Idx idf(4, k);
    klgrad::logits_options opt;
    opt.aggregation = klgrad::aggregation::token_sum;
    klgrad::top_k_divergence(f, klgrad::logit_rows(zf, zrf), idf, vf, gf, opt);
    CHECK((idf == r.idx).all());
    CHECK(((vf.cast<double>() - r.value).abs() < 1e-5 * r.value.max(1.0)).all());
    CHECK(((gf.cast<double>() - r.grad).abs() < 1e-6).all());
    // masked rows are never read and get index -1
    Rows zm = z, zrm = zr, mask(2, 2);
    zm.row(1).setConstant(qnan);
    zrm.row(1).setConstant(qnan);
    mask << 1, 0, 1, 1;
    Vec value(4);
    Rows grad(4, V);
    Idx idx(4, k);
    klgrad::top_k_divergence(f, klgrad::logit_rows(zm, zrm, mask), idx, value, grad, opt);
    CHECK(value(1) == 0);
    CHECK((grad.row(1) == 0).all());
    CHECK((idx.row(1) == -1).all());
    CHECK(value(3) == r.value(3));
  }
}

TEST_CASE("top-k forms: bad rows name the array that chooses K", "[logits][top-k]") {
  const Index V = 8;
  Rows z = random_rows(2, V, 1.0, 81), zr = random_rows(2, V, 1.0, 82);
  z(1, 3) = qnan;
  Vec value(2);
  Idx idx(2, 3);
  for (top_k_form f : klgrad::top_k_forms) {
    INFO(klgrad::to_string(f));
    try {
      klgrad::top_k_divergence(f, klgrad::logit_rows(z, zr), idx, value);
      FAIL("no error");
    } catch (const klgrad::input_error& e) {
      CHECK(std::string(e.what()).find("z row 1, column 3") != std::string::npos);
    }
  }
  CHECK(klgrad::top_k_form_named("reverse-kl-top-k-tail") == top_k_form::reverse_kl_tail);
  CHECK(!klgrad::top_k_form_named("reverse-kl-top-k-head"));
}

namespace {

/// Every top-k form over a batch_for() batch in T, the gradient over z against the gradient
/// apart: the same K, values and gradient bit for bit (the entries off K are computed on the
/// same packets either way, K's by the same scalar loop).
template <class T>
void check_top_k_over_z(Index V, Index k, bool log_probs, double tau) {
  const auto b = over_logits::batch_for<T>(V, log_probs, 151);
  for (top_k_form f : klgrad::top_k_forms) {
    INFO(klgrad::to_string(f) << ", V = " << V << ", k = " << k << ", log_probs " << log_probs
                              << ", tau " << tau);
    klgrad::logits_options opt;
    opt.temperature = tau;
    opt.log_probs = log_probs;
    std::vector<Idx> chosen;
    over_logits::check_over_z(b, [&](const auto& batch, auto& value, auto& grad) {
      chosen.emplace_back(b.rows_n(), k);
      return klgrad::top_k_divergence(f, batch, chosen.back(), value, grad, opt);
    });
    REQUIRE(chosen.size() == 2);
    CHECK((chosen[0] == chosen[1]).all());
  }
}

}  // namespace

TEST_CASE("top-k forms: the gradient written over z is the gradient written apart",
          "[logits][top-k][over-z]") {
  // Row 3 of every batch holds small integers: entries tied with K's least entry on either
  // side of K's boundary, in packets and in the tail.
  over_logits::for_each_setting([](bool log_probs, double tau) {
    for (Index V : {Index(7), Index(1029), Index(16387)})
      for (Index k : {Index(1), Index(5), Index(64), V}) {
        if (k > V) continue;
        check_top_k_over_z<float>(V, k, log_probs, tau);
        check_top_k_over_z<double>(V, k, log_probs, tau);
      }
  });
}
