// The runtime spec: one string a trainer's config carries (such as
// "k3-as-loss,is=differentiable,beta=0.04"), parsed into a validated value and printed back
// in canonical form.
#pragma once

#include "aggregation.hpp"
#include "errors.hpp"
#include "estimators.hpp"
#include "importance.hpp"
#include "level.hpp"
#include "placement.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace klgrad {

/// A validated KL configuration. Grammar of its string form:
///   term{,key=value}   term = EST[~EST]-PLACEMENT   EST = k1|k2|k3|abs
///   PLACEMENT = in-reward|as-loss|both   ("a~b": value of a, gradient of b)
///   keys: is=none|detached|differentiable  is-clip=C  is-mask=LO:HI
///         level=token|to-go|sequence  gamma=G
///         agg=token-mean|token-sum|seq-mean-token-sum|seq-mean-token-mean|
///             seq-mean-token-sum-norm  agg-norm=L  beta=B
/// Defaults: is=none, level=token, gamma=1, agg=token-mean, beta=1.
struct spec {
  klgrad::term term;
  klgrad::importance importance;
  klgrad::level level = level::token;
  double gamma = 1.0;
  klgrad::aggregation aggregation = aggregation::token_mean;
  double aggregation_norm = 0.0;  ///< L of seq_mean_token_sum_norm (0 when unused)
  double beta = 1.0;

  friend bool operator==(const spec& a, const spec& b) {
    return a.term == b.term && a.importance == b.importance && a.level == b.level &&
           a.gamma == b.gamma && a.aggregation == b.aggregation &&
           a.aggregation_norm == b.aggregation_norm && a.beta == b.beta;
  }
  friend bool operator!=(const spec& a, const spec& b) { return !(a == b); }
};

namespace detail {

/// "a|b|c" from a list of names.
template <class Enum, std::size_t N>
std::string alternatives(const Enum (&all)[N]) {
  std::string out;
  for (auto e : all) {
    if (!out.empty()) out += '|';
    out += to_string(e);
  }
  return out;
}

template <class Enum, std::size_t N>
Enum parse_word(std::string_view word, const Enum (&all)[N], std::string_view what,
                std::string_view whole) {
  for (auto e : all)
    if (to_string(e) == word) return e;
  raise<spec_error>(cat("spec '", whole, "': unknown ", what, " '", word, "'; allowed: ",
                        alternatives(all)));
}

inline double parse_number(std::string_view text, std::string_view key, std::string_view whole) {
  const std::string s(text);
  char* end = nullptr;
  errno = 0;
  const double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v))
    raise<spec_error>(cat("spec '", whole, "': ", key, "='", text,
                          "' is not a finite number"));
  return v;
}

/// Shortest decimal text that reads back as exactly v.
inline std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  if (v == std::floor(v) && std::abs(v) < 1e15) {  // integers without an exponent
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

inline std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (;;) {
    const std::size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string_view::npos ? at : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

inline term parse_term(std::string_view text, std::string_view whole) {
  // The placement is the longest suffix after a '-' that names one ("in-reward" has a '-').
  for (auto p : all_placements) {
    const std::string suffix = std::string("-") + std::string(to_string(p));
    if (text.size() > suffix.size() &&
        text.substr(text.size() - suffix.size()) == suffix) {
      const std::string_view estimators = text.substr(0, text.size() - suffix.size());
      const auto names = split(estimators, '~');
      if (names.size() > 2)
        raise<spec_error>(cat("spec '", whole, "': term '", text,
                              "' has more than one '~'; write VALUE~GRADIENT-PLACEMENT"));
      term t;
      t.where = p;
      t.value_estimator = parse_word(names[0], all_estimators, "estimator", whole);
      t.gradient_estimator =
          names.size() == 2 ? parse_word(names[1], all_estimators, "estimator", whole)
                            : t.value_estimator;
      return t;
    }
  }
  raise<spec_error>(cat("spec '", whole, "': term '", text,
                        "' must be EST[~EST]-PLACEMENT with EST ",
                        alternatives(all_estimators), " and PLACEMENT ",
                        alternatives(all_placements), " (e.g. k3-as-loss)"));
}

inline void validate(const spec& s, std::string_view whole) {
  auto fail = [&](const std::string& why) { raise<spec_error>(cat("spec '", whole, "': ", why)); };
  if (s.level == level::to_go && has_loss_part(s.term.where))
    fail(cat("level=to-go sums in-reward penalties into a reward-to-go; an ",
             to_string(s.term.where),
             " term is differentiated where it stands, so use level=token or level=sequence"));
  if (s.gamma != 1.0 && s.level != level::to_go)
    fail("gamma discounts a reward-to-go and needs level=to-go");
  if (!(s.gamma >= 0.0 && s.gamma <= 1.0))
    fail(cat("gamma=", format_number(s.gamma), " must lie in [0, 1]"));
  if (!(s.beta >= 0.0)) fail(cat("beta=", format_number(s.beta), " must be >= 0"));
  const importance& is = s.importance;
  if (!is.active() && (is.truncated() || is.masked()))
    fail("is-clip and is-mask need an importance weight: add is=detached or is=differentiable");
  if (!(is.clip > 0.0)) fail(cat("is-clip=", format_number(is.clip), " must be > 0"));
  if (!(is.mask_lo >= 0.0 && is.mask_lo < is.mask_hi))
    fail(cat("is-mask=", format_number(is.mask_lo), ":", format_number(is.mask_hi),
             " needs 0 <= LO < HI"));
  const bool normed = s.aggregation == aggregation::seq_mean_token_sum_norm;
  if (normed && !(s.aggregation_norm > 0.0))
    fail("agg=seq-mean-token-sum-norm needs agg-norm=L with L > 0 (the fixed length it divides by)");
  if (!normed && s.aggregation_norm != 0.0)
    fail("agg-norm=L applies only to agg=seq-mean-token-sum-norm");
}

}  // namespace detail

/// Parses and validates a spec string; raises spec_error naming the wrong word and the
/// allowed ones.
inline spec parse_spec(std::string_view text) {
  const auto parts = detail::split(text, ',');
  spec s;
  s.term = detail::parse_term(parts[0], text);
  std::vector<std::string_view> seen;
  const char* keys = "is, is-clip, is-mask, level, gamma, agg, agg-norm, beta";
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string_view part = parts[i];
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos)
      detail::raise<spec_error>(detail::cat("spec '", text, "': '", part,
                                            "' is not key=value; keys: ", keys));
    const std::string_view key = part.substr(0, eq), val = part.substr(eq + 1);
    for (auto k : seen)
      if (k == key)
        detail::raise<spec_error>(detail::cat("spec '", text, "': key '", key, "' given twice"));
    seen.push_back(key);
    if (key == "is") {
      s.importance.mode = detail::parse_word(val, all_weightings, "is", text);
    } else if (key == "is-clip") {
      s.importance.clip = detail::parse_number(val, key, text);
    } else if (key == "is-mask") {
      const auto bounds = detail::split(val, ':');
      if (bounds.size() != 2)
        detail::raise<spec_error>(
            detail::cat("spec '", text, "': is-mask='", val, "' must be LO:HI"));
      s.importance.mask_lo = detail::parse_number(bounds[0], "is-mask LO", text);
      s.importance.mask_hi = bounds[1] == "inf"
                                 ? std::numeric_limits<double>::infinity()
                                 : detail::parse_number(bounds[1], "is-mask HI", text);
    } else if (key == "level") {
      s.level = detail::parse_word(val, all_levels, "level", text);
    } else if (key == "gamma") {
      s.gamma = detail::parse_number(val, key, text);
    } else if (key == "agg") {
      s.aggregation = detail::parse_word(val, all_aggregations, "agg", text);
    } else if (key == "agg-norm") {
      s.aggregation_norm = detail::parse_number(val, key, text);
    } else if (key == "beta") {
      s.beta = detail::parse_number(val, key, text);
    } else {
      detail::raise<spec_error>(
          detail::cat("spec '", text, "': unknown key '", key, "'; keys: ", keys));
    }
  }
  detail::validate(s, text);
  return s;
}

/// The canonical string of a spec: the term, then every key that differs from its
/// default, in the grammar's order. parse_spec(to_string(s)) == s.
inline std::string to_string(const spec& s) {
  using detail::format_number;
  std::string out(to_string(s.term.value_estimator));
  if (s.term.straight_through()) out += "~" + std::string(to_string(s.term.gradient_estimator));
  out += "-" + std::string(to_string(s.term.where));
  const importance& is = s.importance;
  if (is.active()) out += ",is=" + std::string(to_string(is.mode));
  if (is.truncated()) out += ",is-clip=" + format_number(is.clip);
  if (is.masked()) out += ",is-mask=" + format_number(is.mask_lo) + ":" + format_number(is.mask_hi);
  if (s.level != level::token) out += ",level=" + std::string(to_string(s.level));
  if (s.gamma != 1.0) out += ",gamma=" + format_number(s.gamma);
  if (s.aggregation != aggregation::token_mean)
    out += ",agg=" + std::string(to_string(s.aggregation));
  if (s.aggregation == aggregation::seq_mean_token_sum_norm)
    out += ",agg-norm=" + format_number(s.aggregation_norm);
  if (s.beta != 1.0) out += ",beta=" + format_number(s.beta);
  return out;
}

}  // namespace klgrad
