// Tests of the spec's one number grammar (number_text.hpp, read by spec.hpp's parse_number for
// every numeric key): each edge with its exact refusal reason, the clamp's item rules, capped
// messages, and the round trip parse_spec(to_string(s)) == s. Expected values are the
// compiler's own reading of the same decimal literals (an independent conversion).
#include "spec_strings.hpp"

#include <klgrad/spec/spec.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

using klgrad::parse_spec;

namespace {

/// The message parse_spec raises for text, or "(accepted)".
std::string refusal(const std::string& text) {
  try {
    parse_spec(text);
  } catch (const klgrad::spec_error& e) {
    return e.what();
  }
  return "(accepted)";
}

const std::string grammar =
    ": write [+|-]DIGITS[.DIGITS][e[+|-]DIGITS] in decimal, without spaces (e.g. 0.04, -1, "
    "1e-3)";
const std::string not_finite = "is not a finite number" + grammar;
const std::string not_bound = "is neither a number nor inf, +inf or -inf" + grammar;
const std::string infinite = "is not a finite number (only clamp bounds and is-mask HI may be inf)";
const std::string too_large = "is beyond the largest double, 1.7976931348623157e+308";
const std::string too_small =
    "is nonzero but below the smallest normal double, 2.2250738585072014e-308: write 0 or a "
    "larger magnitude";

/// One numeric key in a spec where it is meaningful: the spec with X for the number, the
/// name messages give it, whether it may be infinite, the field it sets, and the sign of the
/// numbers it takes there (a clamp's LO is negative, so that the band holds 0).
struct numeric_key {
  std::string pattern, label;
  bool bound;
  std::function<double(const klgrad::spec&)> field;
  double sign = 1.0;
  std::string with(const std::string& x) const {
    std::string s = pattern;
    return s.replace(s.find('X'), 1, x);
  }
};

std::vector<numeric_key> numeric_keys() {
  using S = const klgrad::spec&;
  return {
      {"k3-as-loss,is=detached,is-clip=X", "is-clip", false, [](S s) { return s.importance.clip; }},
      {"k3-as-loss,is=detached,is-mask=X:2", "is-mask LO", false,
       [](S s) { return s.importance.mask_lo; }},
      {"k3-as-loss,is=detached,is-mask=0.25:X", "is-mask HI", true,
       [](S s) { return s.importance.mask_hi; }},
      {"k3-as-loss,clamp=value:X:1", "clamp value LO", true, [](S s) { return s.clamp.value_lo; }, -1.0},
      {"k3-as-loss,clamp=value:-1:X", "clamp value HI", true, [](S s) { return s.clamp.value_hi; }},
      {"k3-as-loss,clamp=log-ratio:X:1", "clamp log-ratio LO", true,
       [](S s) { return s.clamp.log_lo; }, -1.0},
      {"k3-as-loss,clamp=log-ratio:-1:X", "clamp log-ratio HI", true,
       [](S s) { return s.clamp.log_hi; }},
      {"k1-in-reward,level=to-go,gamma=X", "gamma", false, [](S s) { return s.gamma; }},
      {"k3-as-loss,agg=token-sum-norm,agg-norm=X", "agg-norm", false,
       [](S s) { return s.aggregation_constants.norm; }},
      {"k3-as-loss,agg-eps=X", "agg-eps", false, [](S s) { return s.aggregation_constants.eps; }},
      {"k3-as-loss,agg=seq-mean-token-mean,agg-seq-eps=X", "agg-seq-eps", false,
       [](S s) { return s.aggregation_constants.seq_eps; }},
      {"k3-as-loss,agg-scale=X", "agg-scale", false,
       [](S s) { return s.aggregation_constants.scale; }},
      {"k3-as-loss,beta=X", "beta", false, [](S s) { return s.beta; }},
  };
}

}  // namespace

TEST_CASE("spec grammar: every numeric key reads one decimal grammar", "[spec][grammar]") {
  struct reading {
    const char* text;
    double value;
  };
  // Every spelling of 0.5 the grammar has: sign, no leading or trailing digits, exponents.
  const reading half[] = {{"0.5", 0.5},   {"+0.5", +0.5},    {".5", .5},     {"+.5", +.5},
                          {"5e-1", 5e-1}, {"5E-1", 5E-1},    {"0.5e0", 0.5e0}, {"0.05e+1", 0.05e+1},
                          {"00.500", 00.500}, {"5000e-4", 5000e-4}};
  for (const auto& key : numeric_keys()) {
    INFO(key.label);
    for (const auto& r : half) {
      const std::string text = key.sign > 0 ? r.text : "-" + std::string(r.text + (r.text[0] == '+'));
      INFO(text);
      CHECK(key.field(parse_spec(key.with(text))) == key.sign * r.value);
    }
    // The refusals every key shares, each with its reason.
    for (const char* bad : {"", ".", "+", "-", "e5", "1e", "1e+", "--1", "+-1", "1.2.3", "0x1p3",
                            "0x10", " 1", "1 ", "1\t", "nan", "NaN", "-nan", "Inf", "INF",
                            "infinity", "1_000", "1e5.5", "1d5", "5f", "1..5", "++1"}) {
      INFO("'" << bad << "'");
      CHECK(refusal(key.with(bad)) == "spec '" + key.with(bad) + "': " + key.label + "='" + bad +
                                          "' " + (key.bound ? not_bound : not_finite));
    }
    for (const char* big : {"1e309", "-1e309", "1.7976931348623159e308", "1e99999999999999999999",
                            "18e307", "179769313486231590000000000000000000000000000000000000000000"
                                      "000000000000000000000000000000000000000000000000000000000000"
                                      "000000000000000000000000000000000000000000000000000000000000"
                                      "000000000000000000000000000000000000000000000000000000000000"
                                      "000000000000000000000000000000000000000000000000000000000000"
                                      "000000000"}) {
      INFO(big);
      const std::string s = key.with(big);
      CHECK(refusal(s) == "spec '" + klgrad::detail::clip(s) + "': " + key.label + "='" +
                              klgrad::detail::clip(big) + "' " + too_large);
    }
    for (const char* tiny : {"1e-310", "-1e-310", "1e-320", "4.9e-324", "1e-400", "2.2e-308",
                             "0.000000000000000000000000000000000000000000000000000001e-300"}) {
      INFO(tiny);
      const std::string s = key.with(tiny);
      CHECK(refusal(s) ==
            "spec '" + klgrad::detail::clip(s) + "': " + key.label + "='" + tiny + "' " + too_small);
    }
    for (const char* inf : {"inf", "+inf", "-inf"}) {
      INFO(inf);
      const std::string s = key.with(inf);
      if (key.bound) CHECK(refusal(s).find(key.label + "='") == std::string::npos);
      else CHECK(refusal(s) == "spec '" + s + "': " + key.label + "='" + inf + "' " + infinite);
    }
  }
}

TEST_CASE("spec grammar: the edges of the double range", "[spec][grammar]") {
  using klgrad::detail::number_problem;
  using klgrad::detail::read_number;
  constexpr double max = std::numeric_limits<double>::max();
  constexpr double min_normal = std::numeric_limits<double>::min();
  CHECK(read_number("1.7976931348623157e308", false).value == max);
  CHECK(read_number("1.7976931348623158e308", false).value == max);  // rounds down to max
  CHECK(read_number("-1.7976931348623157e+308", false).value == -max);
  CHECK(read_number("2.2250738585072014e-308", false).value == min_normal);
  CHECK(read_number("0", false).value == 0.0);
  CHECK(read_number("0e999999", false).value == 0.0);  // zero is zero at any exponent
  CHECK(std::signbit(read_number("-0", false).value));
  CHECK(read_number("1e-309", false).problem == number_problem::too_small);
  CHECK(read_number("1.7976931348623159e308", false).problem == number_problem::too_large);
  CHECK(read_number("inf", true).value == std::numeric_limits<double>::infinity());
  CHECK(read_number("+inf", true).value == std::numeric_limits<double>::infinity());
  CHECK(read_number("-inf", true).value == -std::numeric_limits<double>::infinity());
  CHECK(read_number("inf", false).problem == number_problem::infinite);
  // The largest double through a spec and back: printed as the shortest text that reads back.
  const auto s = parse_spec("k3-as-loss,beta=1.7976931348623157e308");
  CHECK(s.beta == max);
  CHECK(to_string(s) == "k3-as-loss,beta=1.7976931348623157e+308");
  CHECK(parse_spec("k3-as-loss,agg-eps=2.2250738585072014e-308").aggregation_constants.eps ==
        min_normal);
}

TEST_CASE("spec grammar: infinite bounds are spelled inf, +inf or -inf wherever they are allowed",
          "[spec][grammar]") {
  // is-mask HI took only "inf" while clamp bounds took "+inf" too.
  CHECK(parse_spec("k3-as-loss,is=detached,is-mask=0.5:+inf") ==
        parse_spec("k3-as-loss,is=detached,is-mask=0.5:inf"));
  CHECK(to_string(parse_spec("k3-as-loss,is=detached,is-mask=0.5:+inf")) ==
        "k3-as-loss,is=detached,is-mask=0.5:inf");
  CHECK(parse_spec("k3-as-loss,clamp=value:-inf:+inf") == parse_spec("k3-as-loss"));
  CHECK(parse_spec("k3-as-loss,clamp=value:-inf:2").clamp.value_lo ==
        -std::numeric_limits<double>::infinity());
  // -inf is a number of the grammar there; the mask's own rule then refuses it.
  CHECK(refusal("k3-as-loss,is=detached,is-mask=0:-inf") ==
        "spec 'k3-as-loss,is=detached,is-mask=0:-inf': is-mask=0:-inf needs 0 <= LO < HI");
  // The mask's LO is finite.
  CHECK(refusal("k3-as-loss,is=detached,is-mask=inf:inf") ==
        "spec 'k3-as-loss,is=detached,is-mask=inf:inf': is-mask LO='inf' " + infinite);
}

TEST_CASE("spec grammar: clamp items each once, a preset first, none alone", "[spec][grammar]") {
  const std::string same = "' set the same thing: give one";
  for (const char* items : {"value:-10:10/value:-1:1", "log-ratio:-1:1/value:-2:2/log-ratio:-3:3",
                            "est:k3/est:k2", "value:-1:1/after-weight/after-weight",
                            "log-ratio:-1:1/detach-weight/detach-weight",
                            "pass-gradient/value:-1:1/pass-gradient"}) {
    INFO(items);
    const std::string s = std::string("k3-as-loss,clamp=") + items;
    const auto parts = klgrad::detail::split(items, '/');
    std::string first, second;
    for (std::size_t i = 0; i < parts.size() && second.empty(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (parts[i].substr(0, parts[i].find(':')) == parts[j].substr(0, parts[j].find(':')))
          first = std::string(parts[j]), second = std::string(parts[i]);
    CHECK(refusal(s) == "spec '" + s + "': clamp='" + items + "': '" + first + "' and '" +
                            second + same);
  }
  CHECK(refusal("k3-as-loss,clamp=value:-1:1/verl") ==
        "spec 'k3-as-loss,clamp=value:-1:1/verl': clamp='value:-1:1/verl': 'value:-1:1' and "
        "'verl': a preset item sets the whole clamp, so it comes first and once (the items "
        "after it amend it)");
  CHECK(refusal("k3-as-loss,clamp=verl/trl").find("'verl' and 'trl': a preset item sets the "
                                                  "whole clamp") != std::string::npos);
  // A preset first, amended by the items after it.
  CHECK(to_string(parse_spec("k3-as-loss,clamp=verl/value:-1:1")) ==
        "k3-as-loss,clamp=log-ratio:-20:20/value:-1:1/est:k3");
  const std::string alone = "': 'none' means no clamp and stands alone: drop it or the other items";
  for (const char* items : {"none/after-weight", "value:-1:1/none", "none/none", "verl/none"}) {
    const std::string s = std::string("k3-as-loss,clamp=") + items;
    CHECK(refusal(s) == "spec '" + s + "': clamp='" + items + alone);
  }
  CHECK(parse_spec("k3-as-loss,clamp=none") == parse_spec("k3-as-loss"));
  // An unknown item is named as unknown, also when repeated.
  CHECK(refusal("k3-as-loss,clamp=foo/foo").find("unknown item 'foo'") != std::string::npos);
}

TEST_CASE("spec grammar: messages quote at most 80 characters of user text", "[spec][grammar]") {
  using klgrad::detail::clip;
  CHECK(clip(std::string(80, 'a')) == std::string(80, 'a'));
  CHECK(clip(std::string(81, 'a')) == std::string(80, 'a') + "... (81 characters)");
  // A two-byte UTF-8 character across the cut is left out whole.
  const std::string accented = std::string(79, 'a') + "\xc3\xa9" + "bc";
  CHECK(clip(accented) == std::string(79, 'a') + "... (83 characters)");
  // A 100 KB spec gave a 200 KB message; now every refusal, whichever part is long, is short
  // and says how long the text was.
  const std::string big(100000, '7');
  const std::string ones(100000, '1');
  const std::vector<std::string> huge = {
      "k3-as-loss," + big + "=1",                           // unknown key
      "k3-as-loss," + big,                                  // not key=value
      "k3-as-loss,beta=" + big,                             // number beyond the range
      "k3-as-loss,beta=1." + ones + "x",                    // not a number
      "k3-as-loss,beta=1." + ones + ",level=to-go",         // refused by validation
      "k3-as-loss,is=" + big,                               // unknown word
      "k" + big + "-as-loss",                               // unknown estimator
      big,                                                  // no term
      "k3-as-loss,is=detached,is-mask=" + big,              // is-mask without ':'
      "k3-as-loss,clamp=value:-1:1/" + big,                 // unknown clamp item
      "k3-as-loss,clamp=value:-1:1." + ones + "/value:-1:1." + ones,  // duplicate items
  };
  for (const std::string& s : huge) {
    INFO(s.substr(0, 40));
    const std::string message = refusal(s);
    CHECK(message != "(accepted)");
    CHECK(message.size() < 1000);
    CHECK(message.rfind("spec '" + s.substr(0, 80) + "... (" + std::to_string(s.size()) +
                            " characters)': ",
                        0) == 0);
  }
}

TEST_CASE("spec grammar: parse_spec(to_string(s)) == s over the sweep and random constants",
          "[spec][grammar]") {
  std::size_t checked = 0;
  for (const std::string& text : klgrad::test::all_spec_strings()) {
    const auto s = parse_spec(text);
    CHECK(parse_spec(to_string(s)) == s);
    CHECK(to_string(parse_spec(to_string(s))) == to_string(s));
    ++checked;
  }
  CHECK(checked > 1000);
  // Random constants with all 53 bits of the significand set at random, across magnitudes:
  // the shortest text (std::to_chars) reads back as exactly the same double.
  std::mt19937_64 rng(20261125);
  std::uniform_real_distribution<double> exponent(-6.0, 6.0), unit(0.0, 1.0);
  auto constant = [&] { return std::pow(10.0, exponent(rng)); };
  for (int i = 0; i < 2000; ++i) {
    klgrad::spec s = parse_spec("k3-as-loss,is=detached,agg=token-sum-norm,agg-norm=1");
    s.beta = constant();
    s.importance.clip = constant();
    s.importance.mask_lo = unit(rng);
    s.importance.mask_hi = s.importance.mask_lo + constant();
    s.clamp.value_lo = -constant();
    s.clamp.value_hi = constant();
    s.clamp.log_lo = -constant();
    s.clamp.log_hi = constant();
    s.aggregation_constants.norm = constant();
    s.aggregation_constants.scale = constant();
    const std::string text = to_string(s);
    INFO(text);
    REQUIRE(parse_spec(text) == s);
    klgrad::spec t = parse_spec("k1-in-reward,level=to-go,agg-eps=1,agg=seq-mean-token-mean");
    t.gamma = unit(rng);
    t.aggregation_constants.eps = constant();
    t.aggregation_constants.seq_eps = constant();
    REQUIRE(parse_spec(to_string(t)) == t);
  }
  // And every finite normal double (random bit patterns) reads back from its shortest text.
  using klgrad::detail::read_number;
  using klgrad::detail::shortest_text;
  for (int i = 0; i < 100000; ++i) {
    std::uint64_t bits = rng();
    double v = 0.0;
    std::memcpy(&v, &bits, sizeof v);
    if (!std::isnormal(v)) continue;
    const auto r = read_number(shortest_text(v), false);
    REQUIRE(r.problem == klgrad::detail::number_problem::none);
    REQUIRE(r.value == v);
  }
  CHECK(shortest_text(100000.0) == "100000");
  CHECK(shortest_text(1e15) == "1e+15");
  CHECK(shortest_text(0.04) == "0.04");
  CHECK(shortest_text(0.1f) == "0.1");
  CHECK(klgrad::detail::cat(0.1f, " ", 0.1, " ", 12345, " ", -1e-7) == "0.1 0.1 12345 -1e-07");
}
