// Tests of errors.hpp's structured input_error: every raise site that a front end (the CLI,
// Python) rephrases sets the reason and the fields that locate the offending value, and
// what() keeps the C++ wording. Expected fields are the positions the tests put the bad
// values at; expected byte counts are enumeration_bytes' formula worked by hand.
#include <klgrad/evaluate.hpp>
#include <klgrad/logits.hpp>
#include <klgrad/logits/sampled.hpp>
#include <klgrad/oracle/enumeration.hpp>
#include <klgrad/oracle/monte_carlo.hpp>
#include <klgrad/spec/spec.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

namespace {

using klgrad::Index;
using klgrad::input_error;
using klgrad::input_reason;
using Rows = Eigen::Array<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::ArrayXd;
constexpr double qnan = std::numeric_limits<double>::quiet_NaN();
constexpr double inf = std::numeric_limits<double>::infinity();

/// The input_error f raises (fails the test when f raises none).
template <class F>
input_error caught(F&& f) {
  try {
    f();
  } catch (const input_error& e) {
    return e;
  }
  FAIL("no input_error raised");
  return input_error("");
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("input_error defaults: reason other and no place", "[errors]") {
  const input_error e("a message");
  CHECK(e.reason == input_reason::other);
  CHECK(e.argument.empty());
  CHECK(e.sequence == -1);
  CHECK(e.position == -1);
  CHECK(e.flat == -1);
  CHECK(e.column == -1);
  CHECK(std::isnan(e.value));
  CHECK(std::isnan(e.limit));
  CHECK(std::string(e.what()) == "a message");
}

TEST_CASE("evaluate: a non-finite padded log-prob carries its place and value", "[errors]") {
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss");
  Rows lp(2, 3), lr(2, 3), value(2, 3), coef(2, 3);
  lp << -1, -2, -1, -1, -1, -1;
  lr = lp;
  lr(1, 2) = inf;
  const input_error e =
      caught([&] { klgrad::evaluate(s, klgrad::padded(lp, lr), value, coef); });
  CHECK(e.reason == input_reason::nonfinite);
  CHECK(e.argument == "ref");
  CHECK(e.sequence == 1);
  CHECK(e.position == 2);
  CHECK(e.flat == 5);  // 1 * T + 2
  CHECK(e.column == -1);
  CHECK(e.value == inf);
  CHECK(contains(e.what(), "nonfinite_policy::propagate"));  // the C++ wording stays
}

TEST_CASE("evaluate: a NaN packed behaviour log-prob carries its flat token", "[errors]") {
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss,is=detached");
  Vec lp(4), lr(4), lb(4), value(4), coef(4);
  lp << -1, -2, -1, -3;
  lr = lp;
  lb = lp;
  lb(3) = qnan;
  Eigen::Array<Index, Eigen::Dynamic, 1> offsets(3);
  offsets << 0, 1, 4;
  const input_error e = caught([&] {
    klgrad::evaluate(s, klgrad::packed(lp, lr, offsets).with_behavior(lb), value, coef);
  });
  CHECK(e.reason == input_reason::nonfinite);
  CHECK(e.argument == "behavior");
  CHECK(e.sequence == 1);
  CHECK(e.position == 2);
  CHECK(e.flat == 3);
  CHECK(std::isnan(e.value));
}

TEST_CASE("evaluate: a weighted spec without behaviour log-probs names behavior", "[errors]") {
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss,is=differentiable");
  Rows lp = Rows::Constant(1, 2, -1.0), value(1, 2), coef(1, 2);
  const input_error e =
      caught([&] { klgrad::evaluate(s, klgrad::padded(lp, lp), value, coef); });
  CHECK(e.reason == input_reason::missing_behavior);
  CHECK(e.argument == "behavior");
  CHECK(contains(e.what(), ".with_behavior(lb)"));
}

TEST_CASE("evaluate and logits: a global count of 0 names the count", "[errors]") {
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss");
  Rows lp = Rows::Constant(1, 2, -1.0), value(1, 2), coef(1, 2);
  klgrad::options opt;
  opt.counts.sequences = 0;
  const input_error e =
      caught([&] { klgrad::evaluate(s, klgrad::padded(lp, lp), value, coef, opt); });
  CHECK(e.reason == input_reason::bad_count);
  CHECK(e.argument == "counts.sequences");
  CHECK(e.value == 0);

  Rows z = Rows::Zero(2, 3);
  Vec v(2);
  klgrad::logits_options lo;
  lo.counts.tokens = 0;
  const input_error f = caught([&] {
    klgrad::logits_divergence(klgrad::divergence::reverse_kl, klgrad::logit_rows(z, z), v, lo);
  });
  CHECK(f.reason == input_reason::bad_count);
  CHECK(f.argument == "counts.tokens");
}

TEST_CASE("logits: a NaN logit carries its row, place and column", "[errors]") {
  Rows z = Rows::Zero(4, 3), zr = Rows::Zero(4, 3);
  z(3, 1) = qnan;
  Vec v(4);
  Rows g(4, 3);
  // Two sequences of two positions: row 3 is sequence 1, position 1.
  const input_error e = caught([&] {
    klgrad::logits_divergence(klgrad::divergence::forward_kl, klgrad::logit_rows(z, zr, 2), v,
                              g);
  });
  CHECK(e.reason == input_reason::nonfinite);
  CHECK(e.argument == "z");
  CHECK(e.flat == 3);
  CHECK(e.sequence == 1);
  CHECK(e.position == 1);
  CHECK(e.column == 1);
  CHECK(std::isnan(e.value));
}

TEST_CASE("logits: a row of -inf and a zero reference have reasons of their own", "[errors]") {
  Rows z = Rows::Zero(2, 2), zr = Rows::Zero(2, 2);
  Vec v(2);
  Rows g(2, 2);
  zr.row(1) << -inf, -inf;
  const input_error e = caught([&] {
    klgrad::logits_divergence(klgrad::divergence::reverse_kl, klgrad::logit_rows(z, zr), v, g);
  });
  CHECK(e.reason == input_reason::empty_row);
  CHECK(e.argument == "z_ref");
  CHECK(e.flat == 1);
  CHECK(e.sequence == -1);  // N x V rows: no padded place
  CHECK(e.column == -1);

  zr.row(1) << 0, -inf;
  const input_error f = caught([&] {
    klgrad::logits_divergence(klgrad::divergence::reverse_kl, klgrad::logit_rows(z, zr), v, g);
  });
  CHECK(f.reason == input_reason::zero_reference);
  CHECK(f.argument == "z_ref");
  CHECK(f.flat == 1);
}

TEST_CASE("oracle: enumeration over max_bytes is refused before allocating", "[errors]") {
  using namespace klgrad::oracle;
  // V = 2, T = 1: 2 outcomes x (2 x 2 parameters + 6 x 1 + 3) doubles = 208 bytes.
  CHECK(enumeration_bytes(2, 1) == 208.0);
  // V = 1024, T = 2: 2^20 outcomes x (2 x 1025 x 1024 + 15) doubles, past 16 TiB.
  CHECK(enumeration_bytes(1024, 2) == 1048576.0 * (2.0 * 1025 * 1024 + 15) * 8);
  const tabular pi(2, 1, matrix::Zero(1, 2));
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss");
  const input_error e = caught([&] { enumerate(s, pi, pi, nullptr, 100.0); });
  CHECK(e.reason == input_reason::too_large);
  CHECK(e.argument == "max_bytes");
  CHECK(e.value == 208.0);
  CHECK(e.limit == 100.0);
  CHECK(contains(e.what(), "enumerate needs 208 bytes, over max_bytes = 100 bytes"));
  CHECK_NOTHROW(enumerate(s, pi, pi, nullptr, 208.0));
  const input_error f = caught([&] { monte_carlo(s, pi, pi, nullptr, 10, 1, 4096, 100.0); });
  CHECK(f.reason == input_reason::too_large);
}
