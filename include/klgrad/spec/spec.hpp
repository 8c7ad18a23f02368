// The runtime spec: one string a trainer's config carries (such as
// "k3-as-loss,is=differentiable,beta=0.04"), parsed into a validated value and printed back
// in canonical form.
#pragma once

#include "../core/aggregation.hpp"
#include "../core/clamp.hpp"
#include "../core/estimators.hpp"
#include "../core/importance.hpp"
#include "../core/level.hpp"
#include "../core/terms.hpp"
#include "../support/errors.hpp"
#include "presets.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace klgrad {

/// A validated KL configuration. Grammar of its string form:
///   term{,key=value}   term = EST[~EST]-PLACEMENT   EST = k1|k2|k3|abs
///   PLACEMENT = in-reward|as-loss|both   ("a~b": value of a, gradient of b)
///   Under preset=P, EST may also be trainer P's own name for its estimator (estimator_aliases
///   in spec/presets.hpp: verl's kl, mse, low_var_kl and NAME+; EasyR1's and ROLL's kl, mse,
///   low_var_kl; slime's low_var_kl; open-instruct's 0-3), which to_string prints in
///   klgrad's words: "low_var_kl-as-loss,preset=slime" is "k3-as-loss,preset=slime,
///   clamp=value:-10:10/after-weight". The key kl=NAME gives that name instead, the term
///   then being only the PLACEMENT: "as-loss,preset=verl,kl=low_var_kl".
///   keys: preset=verl|openrlhf|nemo-rl|trl|slime|open-instruct|roll|easyr1
///         is=none|detached|differentiable  is-level=token|prefix|per-decision|sequence-mean
///         is-clip=C  is-mask=LO:HI  clamp=CLAMP
///         level=token|to-go|sequence  gamma=G
///         agg=token-mean|token-sum|token-sum-norm|seq-mean-token-sum|
///             seq-mean-token-mean|seq-mean-token-sum-norm  agg-norm=L  agg-eps=E
///         agg-seq-eps=E  agg-scale=S  beta=B
///   CLAMP = none | ITEM{/ITEM}, ITEM = PRESET (that trainer's clamp for the term)
///         | log-ratio:LO:HI | value:LO:HI | est:EST{:EST} | after-weight | detach-weight
///         | pass-gradient   (each kind once; a PRESET only first, the items after it amend
///                            it; none only alone; see clamp_policy)
///   Every number (C, LO, HI, G, L, E, S, B) is NUMBER = [+|-](D[.[D]]|.D)[(e|E)[+|-]D],
///   D = decimal digits: no spaces, no hex, no nan, read the same in every locale; clamp
///   bounds and is-mask HI may also be exactly inf, +inf or -inf, nothing else may.
///   A number beyond the largest double, or nonzero below the smallest normal double
///   (2.2250738585072014e-308: a subnormal), is refused with that reason (detail::read_number).
///   Messages quote at most 80 characters of the spec and of each word.
/// Defaults: is=none, is-level=token, no clamp, level=token, gamma=1, agg=token-mean,
/// agg-eps=0, agg-seq-eps=0, agg-scale=1, beta=1. agg-norm=L (L > 0) is required by the -norm
/// modes and refused elsewhere; agg-eps (>= 0) is added to the batch count a mode divides by
/// (N_tokens or B), agg-seq-eps (>= 0) to n_b of seq-mean-token-mean, and agg-scale (> 0)
/// multiplies a_{b,t} (aggregation_constants).
/// preset=P first sets trainer P's clamp, weight and aggregation for the term (presets.hpp),
/// then the other keys override them, wherever preset= stands in the string; agg-eps and
/// agg-seq-eps, unless written, are trainer P's for the final agg (denominators()). Examples:
///   k3-as-loss,preset=verl                      verl's low_var_kl KL loss
///   k3~k2-as-loss,preset=verl                   verl's k3+ (k3 value, k2 gradient)
///   k3-as-loss,is=differentiable,preset=trl     TRL's use_bias_correction_kl
///   k3-as-loss,preset=slime,clamp=value:-10:10/after-weight   slime's low_var_kl
///   k1-in-reward,is=detached,is-level=per-decision,gamma=1   unbiased off-policy KL_seq
struct spec {
  klgrad::term term;
  klgrad::preset preset = preset::none;
  klgrad::importance importance;
  clamp_policy clamp;
  klgrad::level level = level::token;
  double gamma = 1.0;
  klgrad::aggregation aggregation = aggregation::token_mean;
  /// The aggregation's constants: agg-norm, agg-eps, agg-seq-eps, agg-scale.
  klgrad::aggregation_constants aggregation_constants;
  double beta = 1.0;

  friend bool operator==(const spec& a, const spec& b) {
    return a.term == b.term && a.preset == b.preset && a.importance == b.importance &&
           a.clamp == b.clamp && a.level == b.level &&
           a.gamma == b.gamma && a.aggregation == b.aggregation &&
           a.aggregation_constants == b.aggregation_constants && a.beta == b.beta;
  }
  friend bool operator!=(const spec& a, const spec& b) { return !(a == b); }
};

namespace detail {

/// "a|b|c" from a list of values (an all_* list, read from its enum's names table).
template <class List>
std::string alternatives(const List& all) {
  std::string out;
  for (auto e : all) {
    if (!out.empty()) out += '|';
    out += to_string(e);
  }
  return out;
}

/// The value of `all` named `word`, or spec_error listing the allowed words.
template <class List>
auto parse_word(std::string_view word, const List& all, std::string_view what,
                std::string_view whole) {
  for (auto e : all)
    if (to_string(e) == word) return e;
  raise<spec_error>(cat("spec '", whole, "': unknown ", what, " '", clip(word), "'; allowed: ",
                        alternatives(all)));
}

/// Where a number may be infinite: clamp bounds and is-mask HI take inf, +inf and -inf.
enum class infinity { refused, allowed };

/// The value of `key` in the spec's one number grammar (read_number), or spec_error with the
/// reason. Every numeric key reads through here.
inline double parse_number(std::string_view text, std::string_view key, std::string_view whole,
                           infinity inf = infinity::refused) {
  const number_reading r = read_number(text, inf == infinity::allowed);
  if (r.problem == number_problem::none) return r.value;
  const char* why = "";
  switch (r.problem) {
    case number_problem::syntax:
      why = inf == infinity::allowed ? "is neither a number nor inf, +inf or -inf"
                                     : "is not a finite number";
      break;
    case number_problem::infinite:
      why = "is not a finite number (only clamp bounds and is-mask HI may be inf)";
      break;
    case number_problem::too_large:
      why = "is beyond the largest double, 1.7976931348623157e+308";
      break;
    default:
      why = "is nonzero but below the smallest normal double, 2.2250738585072014e-308: write 0 "
            "or a larger magnitude";
  }
  const char* grammar = r.problem != number_problem::syntax
                            ? ""
                            : ": write [+|-]DIGITS[.DIGITS][e[+|-]DIGITS] in decimal, without "
                              "spaces (e.g. 0.04, -1, 1e-3)";
  raise<spec_error>(cat("spec '", whole, "': ", key, "='", clip(text), "' ", why, grammar));
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

/// The term of a trainer's own estimator name under its preset (estimator_aliases; verl's
/// NAME+ is NAME's value with the k2 gradient), with the keys the name adds; false when the
/// name is none of the preset's.
inline bool alias_term(std::string_view name, preset p, term& t, std::string_view& keys) {
  const bool plus = capabilities(p).straight_through_k2 && name.size() > 1 && name.back() == '+';
  if (plus) name.remove_suffix(1);
  bool found = false;
  for (const estimator_alias& a : estimator_aliases(p))
    if (a.name == name) {
      t.value_estimator = a.value;
      t.gradient_estimator = a.gradient;
      keys = has_loss_part(t.where) ? a.loss_keys : a.reward_keys;
      found = true;
    }
  for (auto e : all_estimators)
    if (!found && to_string(e) == name) t.value_estimator = t.gradient_estimator = e, found = true;
  if (plus) t.gradient_estimator = estimator::k2;
  return found && p != preset::none;
}

/// The term of a spec's first word; under a preset the estimator may be one of the
/// trainer's own names (alias_term), whose keys go to `keys`.
inline term parse_term(std::string_view text, preset chosen, std::string_view& keys,
                       std::string_view whole) {
  // The placement is the longest suffix after a '-' that names one ("in-reward" has a '-').
  for (auto p : all_placements) {
    const std::string suffix = std::string("-") + std::string(to_string(p));
    if (text.size() > suffix.size() &&
        text.substr(text.size() - suffix.size()) == suffix) {
      const std::string_view estimators = text.substr(0, text.size() - suffix.size());
      term t;
      t.where = p;
      if (estimators.find('~') == std::string_view::npos && alias_term(estimators, chosen, t, keys))
        return t;
      const auto names = split(estimators, '~');
      if (names.size() > 2)
        raise<spec_error>(cat("spec '", whole, "': term '", clip(text),
                              "' has more than one '~'; write VALUE~GRADIENT-PLACEMENT"));
      if (chosen != preset::none && names.size() == 1)
        raise<spec_error>(cat("spec '", whole, "': preset=", to_string(chosen),
                              " has no estimator '", clip(estimators), "'; its names: ",
                              capabilities(chosen).names, "; klgrad's: ",
                              alternatives(all_estimators)));
      t.value_estimator = parse_word(names[0], all_estimators, "estimator", whole);
      t.gradient_estimator =
          names.size() == 2 ? parse_word(names[1], all_estimators, "estimator", whole)
                            : t.value_estimator;
      return t;
    }
  }
  raise<spec_error>(cat("spec '", whole, "': term '", clip(text),
                        "' must be EST[~EST]-PLACEMENT with EST ",
                        alternatives(all_estimators), " and PLACEMENT ",
                        alternatives(all_placements), " (e.g. k3-as-loss)"));
}

/// The term "PLACEMENT,...,kl=NAME": trainer P's estimator NAME (alias_term) at PLACEMENT.
inline term named_term(std::string_view head, std::string_view name, preset chosen,
                       std::string_view& keys, std::string_view whole) {
  term t;
  bool placed = false;
  for (auto p : all_placements)
    if (to_string(p) == head) t.where = p, placed = true;
  if (!placed)
    raise<spec_error>(cat("spec '", whole, "': with kl=", clip(name), " the term is only its "
                          "placement (", alternatives(all_placements), "), not '", clip(head),
                          "': give the estimator once"));
  if (chosen == preset::none)
    raise<spec_error>(cat("spec '", whole, "': kl=", clip(name), " is a trainer's name for its "
                          "estimator and needs preset=", alternatives(all_presets)));
  if (!alias_term(name, chosen, t, keys))
    raise<spec_error>(cat("spec '", whole, "': preset=", to_string(chosen), " has no estimator '",
                          clip(name), "'; its names: ", capabilities(chosen).names,
                          "; klgrad's: ", alternatives(all_estimators)));
  return t;
}

/// Parses CLAMP (see spec): `none` alone, or items each given once, a preset's item first
/// (it sets the whole policy, which the items after it amend).
inline clamp_policy parse_clamp(std::string_view text, const term& t, std::string_view whole) {
  auto fail = [&](const std::string& why) {
    raise<spec_error>(cat("spec '", whole, "': clamp='", clip(text), "': ", why));
  };
  clamp_policy c;
  if (text == "none") return c;
  const auto items = split(text, '/');
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string_view item = items[i];
    const auto fields = split(item, ':');
    const std::string_view head = fields[0];
    if (item == "none") fail("'none' means no clamp and stands alone: drop it or the other items");
    bool preset_item = false;
    for (auto p : all_presets)
      if (to_string(p) == item) {
        if (i > 0)
          fail(cat("'", clip(items[0]), "' and '", item, "': a preset item sets the whole "
                   "clamp, so it comes first and once (the items after it amend it)"));
        c = conventions(p, t).clamp;
        preset_item = true;
      }
    if (preset_item) continue;
    if (head == "log-ratio" || head == "value") {
      if (fields.size() != 3) fail(cat("'", clip(item), "' must be ", head, ":LO:HI"));
      const double lo = parse_number(fields[1], cat("clamp ", head, " LO"), whole,
                                     infinity::allowed);
      const double hi = parse_number(fields[2], cat("clamp ", head, " HI"), whole,
                                     infinity::allowed);
      if (!(lo < hi)) fail(cat("'", clip(item), "' needs LO < HI"));
      (head == "value" ? c.value_lo : c.log_lo) = lo;
      (head == "value" ? c.value_hi : c.log_hi) = hi;
    } else if (head == "est") {
      if (fields.size() < 2) fail("'est' needs at least one estimator, e.g. est:k3");
      c.estimators = 0;
      for (std::size_t k = 1; k < fields.size(); ++k)
        c.estimators |= estimator_bit(parse_word(fields[k], all_estimators, "estimator", whole));
    } else if (head == "after-weight" && fields.size() == 1) {
      c.after_weight = true;
    } else if (head == "detach-weight" && fields.size() == 1) {
      c.detach_weight = true;
    } else if (head == "pass-gradient" && fields.size() == 1) {
      c.pass_gradient = true;
    } else {
      fail(cat("unknown item '", clip(item), "'; items: none, a preset (", alternatives(all_presets),
               "), log-ratio:LO:HI, value:LO:HI, est:EST[:EST...], after-weight, "
               "detach-weight, pass-gradient, joined by '/'"));
    }
    for (std::size_t j = 0; j < i; ++j)  // a second item of one kind would silently win
      if (split(items[j], ':')[0] == head)
        fail(cat("'", clip(items[j]), "' and '", clip(item), "' set the same thing: give one"));
  }
  return c;
}

/// The canonical text of a clamp policy.
inline std::string format_clamp(const clamp_policy& c) {
  std::string out;
  auto add = [&](const std::string& item) { out += (out.empty() ? "" : "/") + item; };
  if (c.log_bounded()) add("log-ratio:" + format_number(c.log_lo) + ":" + format_number(c.log_hi));
  if (c.value_bounded())
    add("value:" + format_number(c.value_lo) + ":" + format_number(c.value_hi));
  if (c.estimators != clamp_policy::all_estimators_mask) {
    std::string est = "est";
    for (auto e : all_estimators)
      if (c.applies_to(e)) est += ":" + std::string(to_string(e));
    add(est);
  }
  if (c.after_weight) add("after-weight");
  if (c.detach_weight) add("detach-weight");
  if (c.pass_gradient) add("pass-gradient");
  return out.empty() ? "none" : out;
}

/// The spec a preset gives a term before explicit keys (the defaults when preset is none).
/// The preset's denominator epsilons are left out: they belong to the final agg, which only
/// the keys settle (parse_spec sets them last).
inline spec preset_base(preset p, const term& t) {
  spec s;
  s.term = t;
  s.preset = p;
  const preset_conventions c = conventions(p, t);
  s.clamp = c.clamp;
  s.importance.mode = c.weight;
  s.aggregation = c.agg;
  return s;
}

inline void validate(const spec& s, std::string_view whole) {
  auto fail = [&](const std::string& why) { raise<spec_error>(cat("spec '", whole, "': ", why)); };
  const importance& is = s.importance;
  const bool per_decision = is.level == weight_level::per_decision;
  if (s.level == level::to_go && has_loss_part(s.term.where))
    fail(cat("level=to-go sums in-reward penalties into a reward-to-go; an ",
             to_string(s.term.where),
             " term is differentiated where it stands, so use level=token or level=sequence"));
  if (s.gamma != 1.0 && s.level != level::to_go && !per_decision)
    fail("gamma discounts a reward-to-go and needs level=to-go or is-level=per-decision");
  if (!(s.gamma >= 0.0 && s.gamma <= 1.0))
    fail(cat("gamma=", format_number(s.gamma), " must lie in [0, 1]"));
  if (!(s.beta >= 0.0)) fail(cat("beta=", format_number(s.beta), " must be >= 0"));
  if (!is.active() && (is.truncated() || is.masked()))
    fail("is-clip and is-mask need an importance weight: add is=detached or is=differentiable");
  if (!is.active() && is.level != weight_level::token)
    fail(cat("is-level=", to_string(is.level),
             " chooses which product of ratios pi/mu weighs a token, and needs a weight: add "
             "is=detached or is=differentiable"));
  if (is.level == weight_level::prefix && s.level == level::to_go)
    fail("is-level=prefix with level=to-go would weight a whole reward-to-go by W_{1:t} of "
         "its first token, but the penalty of a later token t' needs W_{1:t'}: use "
         "is-level=per-decision (with gamma there)");
  if (is.level == weight_level::prefix && s.level == level::sequence)
    fail("level=sequence makes one term per sequence, whose weight is one number per "
         "sequence: use is-level=sequence-mean or is-level=token, not prefix");
  if (per_decision) {
    if (s.term.where != placement::in_reward)
      fail(cat("is-level=per-decision weights the reward-to-go of in-reward penalties "
               "b_t = k(s_t); an ", to_string(s.term.where),
               " term is differentiated where it stands: use is-level=prefix"));
    if (s.level != level::token)
      fail("is-level=per-decision already sums the reward-to-go "
           "c_t = sum_{t'>=t} gamma^(t'-t) W_{1:t'} b_{t'}: keep level=token (gamma goes "
           "with the per-decision weights)");
    if (is.mode == weighting::differentiable)
      fail("is-level=per-decision coefficients are made of detached weights (surrogate "
           "sum_t sg(c_t) lp_t; with gamma=1 they are the gradient of the differentiable "
           "prefix-weighted penalties, is=differentiable,is-level=prefix): use is=detached");
  }
  if (is.level == weight_level::sequence_mean && s.level == level::to_go)
    fail("is-level=sequence-mean with level=to-go: the geometric-mean sequence ratio is no "
         "importance weight of any prefix, so it corrects no reward-to-go; use "
         "is-level=per-decision");
  if (!(is.clip > 0.0)) fail(cat("is-clip=", format_number(is.clip), " must be > 0"));
  if (!(is.mask_lo >= 0.0 && is.mask_lo < is.mask_hi))
    fail(cat("is-mask=", format_number(is.mask_lo), ":", format_number(is.mask_hi),
             " needs 0 <= LO < HI"));
  const clamp_policy& c = s.clamp;
  if (c.estimators == 0) fail("clamp est: needs at least one estimator");
  const std::string band = clamp_band_problem(c);
  if (!band.empty()) fail(band);
  if (c.after_weight) {
    if (!c.value_bounded())
      fail("clamp after-weight moves the value bound after the weight, and needs value:LO:HI");
    if (s.term.where != placement::as_loss)
      fail(cat("clamp after-weight bounds the weighted loss term w*k; a ", to_string(s.term.where),
               " term has an in-reward penalty, which no weight multiplies inside the loss: "
               "drop after-weight"));
    if (s.level != level::token || is.level != weight_level::token)
      fail("clamp after-weight bounds one token's weighted term w_t*k(s_t): it needs "
           "level=token and is-level=token");
  }
  if (c.detach_weight && !c.log_bounded())
    fail("clamp detach-weight detaches the weight where the log-ratio bound is active, and "
         "needs log-ratio:LO:HI");
  if (s.preset != preset::none) {
    const std::string why = preset_mismatch(s.preset, s.term);
    if (!why.empty()) fail(why);
  }
  const std::string constants_problem =
      aggregation_problem(s.aggregation, s.aggregation_constants,
                          {"agg=", "agg-norm=", "agg-eps=", "agg-seq-eps=", "agg-scale="});
  if (!constants_problem.empty()) fail(constants_problem);
  if (s.preset != preset::none) {
    const std::string why = preset_aggregation_mismatch(s.preset, s.aggregation);
    if (!why.empty()) fail(why);
  }
}

}  // namespace detail

/// Parses and validates a spec string; raises spec_error naming the wrong word and the
/// allowed ones.
inline spec parse_spec(std::string_view text) {
  using detail::clip;
  const auto parts = detail::split(text, ',');
  const std::string whole = clip(text);  // as messages quote it
  const char* keys =
      "preset, is, is-level, is-clip, is-mask, clamp, level, gamma, agg, agg-norm, agg-eps, "
      "agg-seq-eps, agg-scale, beta, kl";
  std::vector<std::pair<std::string_view, std::string_view>> items;
  preset chosen = preset::none;
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string_view part = parts[i];
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos)
      detail::raise<spec_error>(detail::cat("spec '", whole, "': '", clip(part),
                                            "' is not key=value; keys: ", keys));
    const std::string_view key = part.substr(0, eq), val = part.substr(eq + 1);
    for (const auto& seen : items)
      if (seen.first == key)
        detail::raise<spec_error>(
            detail::cat("spec '", whole, "': key '", clip(key), "' given twice"));
    items.emplace_back(key, val);
    if (key == "preset") chosen = detail::parse_word(val, all_presets, "preset", whole);
  }
  const auto kl = std::find_if(items.begin(), items.end(),
                               [](const auto& item) { return item.first == "kl"; });
  // The preset first, wherever it stands, then the keys a trainer's estimator name adds;
  // explicit keys override both. The preset's denominator epsilons belong to the final agg,
  // so they are set after the keys unless written out.
  std::string_view alias_keys;
  const term t = kl == items.end() ? detail::parse_term(parts[0], chosen, alias_keys, whole)
                                   : detail::named_term(parts[0], kl->second, chosen, alias_keys, whole);
  spec s = detail::preset_base(chosen, t);
  if (!alias_keys.empty())
    for (const std::string_view part : detail::split(alias_keys, ',')) {
      const std::size_t eq = part.find('=');
      items.insert(items.begin(), {part.substr(0, eq), part.substr(eq + 1)});
    }
  bool eps_given = false, seq_eps_given = false;
  for (const auto& [key, val] : items) {
    if (key == "preset" || key == "kl") {
    } else if (key == "is") {
      s.importance.mode = detail::parse_word(val, all_weightings, "is", whole);
    } else if (key == "is-level") {
      s.importance.level = detail::parse_word(val, all_weight_levels, "is-level", whole);
    } else if (key == "is-clip") {
      s.importance.clip = detail::parse_number(val, key, whole);
    } else if (key == "is-mask") {
      const auto bounds = detail::split(val, ':');
      if (bounds.size() != 2)
        detail::raise<spec_error>(
            detail::cat("spec '", whole, "': is-mask='", clip(val), "' must be LO:HI"));
      s.importance.mask_lo = detail::parse_number(bounds[0], "is-mask LO", whole);
      s.importance.mask_hi =
          detail::parse_number(bounds[1], "is-mask HI", whole, detail::infinity::allowed);
    } else if (key == "clamp") {
      s.clamp = detail::parse_clamp(val, t, whole);
    } else if (key == "level") {
      s.level = detail::parse_word(val, all_levels, "level", whole);
    } else if (key == "gamma") {
      s.gamma = detail::parse_number(val, key, whole);
    } else if (key == "agg") {
      s.aggregation = detail::parse_word(val, all_aggregations, "agg", whole);
    } else if (key == "agg-norm") {
      s.aggregation_constants.norm = detail::parse_number(val, key, whole);
    } else if (key == "agg-eps") {
      s.aggregation_constants.eps = detail::parse_number(val, key, whole);
      eps_given = true;
    } else if (key == "agg-seq-eps") {
      s.aggregation_constants.seq_eps = detail::parse_number(val, key, whole);
      seq_eps_given = true;
    } else if (key == "agg-scale") {
      s.aggregation_constants.scale = detail::parse_number(val, key, whole);
    } else if (key == "beta") {
      s.beta = detail::parse_number(val, key, whole);
    } else {
      detail::raise<spec_error>(
          detail::cat("spec '", whole, "': unknown key '", clip(key), "'; keys: ", keys));
    }
  }
  const preset_denominators d = denominators(s.preset, s.aggregation);
  if (!eps_given) s.aggregation_constants.eps = d.eps;
  if (!seq_eps_given) s.aggregation_constants.seq_eps = d.seq_eps;
  detail::validate(s, whole);
  return s;
}

/// The canonical string of a spec: the term, the preset if any, then every key that differs
/// from what the preset (or, without one, the defaults) gives the term, in the grammar's
/// order. parse_spec(to_string(s)) == s.
inline std::string to_string(const spec& s) {
  using detail::format_number;
  const spec base = detail::preset_base(s.preset, s.term);
  std::string out(to_string(s.term.value_estimator));
  if (s.term.straight_through()) out += "~" + std::string(to_string(s.term.gradient_estimator));
  out += "-" + std::string(to_string(s.term.where));
  if (s.preset != preset::none) out += ",preset=" + std::string(to_string(s.preset));
  const importance& is = s.importance;
  if (is.mode != base.importance.mode) out += ",is=" + std::string(to_string(is.mode));
  if (is.level != weight_level::token) out += ",is-level=" + std::string(to_string(is.level));
  if (is.truncated()) out += ",is-clip=" + format_number(is.clip);
  if (is.masked()) out += ",is-mask=" + format_number(is.mask_lo) + ":" + format_number(is.mask_hi);
  if (s.clamp != base.clamp) out += ",clamp=" + detail::format_clamp(s.clamp);
  if (s.level != level::token) out += ",level=" + std::string(to_string(s.level));
  if (s.gamma != 1.0) out += ",gamma=" + format_number(s.gamma);
  if (s.aggregation != base.aggregation)
    out += ",agg=" + std::string(to_string(s.aggregation));
  const aggregation_constants& k = s.aggregation_constants;
  if (uses_norm(s.aggregation)) out += ",agg-norm=" + format_number(k.norm);
  // The preset's epsilons are those of the final agg.
  const preset_denominators d = denominators(s.preset, s.aggregation);
  if (k.eps != d.eps) out += ",agg-eps=" + format_number(k.eps);
  if (k.seq_eps != d.seq_eps) out += ",agg-seq-eps=" + format_number(k.seq_eps);
  if (k.scale != 1.0) out += ",agg-scale=" + format_number(k.scale);
  if (s.beta != 1.0) out += ",beta=" + format_number(s.beta);
  return out;
}

/// The same configuration with the preset written out as explicit keys (preset none):
/// to_string(expand(s)) is the klgrad spec a preset stands for.
inline spec expand(spec s) {
  s.preset = preset::none;
  return s;
}

/// a_{b,t} of the spec's aggregation (mode and constants) for a valid token of a sequence
/// with n_b valid tokens, given the batch's N_tokens and B.
inline double aggregation_weight(const spec& s, Eigen::Index n_b, Eigen::Index tokens,
                                 Eigen::Index sequences) {
  return aggregation_weight(s.aggregation, s.aggregation_constants, n_b, tokens, sequences);
}

}  // namespace klgrad
