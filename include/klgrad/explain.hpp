// The verdict of a spec: which gradient it follows in expectation on one state and over
// sequences, on-policy and from a behaviour policy, derived from the theory (SPEC 3-5).
#pragma once

#include "core/adapter.hpp"
#include "core/estimators.hpp"
#include "core/importance.hpp"
#include "core/level.hpp"
#include "core/terms.hpp"
#include "spec/spec.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace klgrad {

/// The exact gradients a configuration can follow in expectation. d is the state
/// distribution of the sampling policy (pi on-policy, mu off-policy); S = sum_t s_t.
enum class gradient_of {
  rkl,         ///< grad KL(pi||ref) of the sequence (of the state when T = 1)
  fkl,         ///< grad KL(ref||pi) of the sequence (of the state when T = 1)
  rkl_token,   ///< sum_h d(h) grad KL(pi_h||ref_h), states frozen ("part 1")
  fkl_token,   ///< sum_h d(h) grad KL(ref_h||pi_h), states frozen
  k2_token,    ///< sum_h d(h) grad E_{pi_h}[s^2/2], states frozen (T = 1: grad E[k2])
  abs_token,   ///< sum_h d(h) grad E_{pi_h}|s|, states frozen (T = 1: grad E|s|)
  k2_sum,      ///< grad E_pi[sum_t s_t^2/2]
  k2_of_sum,   ///< grad E_pi[S^2/2]
  abs_of_sum,  ///< grad E_pi|S|
};

/// Each gradient's names as the verdicts print them: on a sequence, and on one state, where
/// the sequence and per-state gradients coincide and only rkl, fkl, E[k2] and E[|s|] occur.
struct gradient_name {
  gradient_of value;
  std::string_view name, one_state;
};
inline constexpr gradient_name gradient_names[] = {
    {gradient_of::rkl, "rkl", "rkl"},
    {gradient_of::fkl, "fkl", "fkl"},
    {gradient_of::rkl_token, "rkl_token", "rkl"},
    {gradient_of::fkl_token, "fkl_token", "fkl"},
    {gradient_of::k2_token, "E[k2]_token", "E[k2]"},
    {gradient_of::abs_token, "E[|s|]_token", "E[|s|]"},
    {gradient_of::k2_sum, "E[sum k2]", "E[sum k2]"},
    {gradient_of::k2_of_sum, "E[k2(S)]", "E[k2(S)]"},
    {gradient_of::abs_of_sum, "E[|S|]", "E[|S|]"}};

inline constexpr auto all_gradients = [] {
  std::array<gradient_of, std::size(gradient_names)> out{};
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = gradient_names[i].value;
  return out;
}();

/// A gradient's name in the verdicts (one_state: the name on a single state).
inline constexpr std::string_view to_string(gradient_of g, bool one_state = false) {
  for (const gradient_name& row : gradient_names)
    if (row.value == g) return one_state ? row.one_state : row.name;
  return "?";
}

/// Whether a gradient is a per-state one, taken under the sampling policy's states.
inline constexpr bool per_state(gradient_of g) {
  return g == gradient_of::rkl_token || g == gradient_of::fkl_token ||
         g == gradient_of::k2_token || g == gradient_of::abs_token;
}

/// One term weight * gradient of an exact expectation.
struct gradient_term {
  gradient_of what;
  double weight;
  bool per_length = false;  ///< the weight is divided by the sequence length T
};

/// What a configuration's expected gradient is in one setting.
struct follows {
  /// unknown: an estimator type without a closed form on explain's basis (has_closed_form).
  enum kind_t { exact, zero, biased, unknown } kind = biased;
  /// exact: E[gradient] = sum of weight * gradient (empty for zero and biased).
  std::vector<gradient_term> terms;
  /// The per-state terms are under mu's state distribution (off-policy over sequences).
  bool behavior_states = false;
  /// "rkl", "rkl_token", "fkl", "fkl_token" (the oracle's targets), "zero", "none"
  /// (biased), or an exact combination such as "rkl - fkl", "E[k2] - rkl", "2 rkl",
  /// "rkl_token(mu)" (a per-state gradient under mu's states).
  std::string name;
  std::string sentence;  ///< one human sentence
};

/// The verdict on a spec: on one state (T = 1) and over autoregressive sequences (T >= 2),
/// with samples from pi and from a behaviour policy mu. Aggregation and beta only rescale
/// the gradient and are ignored (as the oracle's per-sample audit does).
struct verdict {
  std::string spec;
  follows on_policy_token, on_policy_sequence, off_policy_token, off_policy_sequence;
  std::string sentence;  ///< one human sentence for the whole spec
};

namespace detail {

// A per-token coefficient as a combination of the functions 1, s, rho = e^-s, s^2/2, |s|
// and sign(s), of the token's own log-ratio s or of the sequence's S.
enum basis { one_fn, s_fn, rho_fn, half_square_fn, abs_fn, sign_fn, basis_size };
using function = std::array<double, basis_size>;

inline function on_basis(const closed_form& c) {
  return {c.one, c.s, c.rho, c.half_square, c.abs, c.sign};
}

/// A term's value and derivative on the basis, from the estimators' closed forms.
struct term_functions {
  function value, derivative;
};

inline function combine(double a, const function& f, double b, const function& g) {
  function out{};
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = a * f[i] + b * g[i];
  return out;
}

inline bool constant(const function& f) {
  for (std::size_t i = 1; i < f.size(); ++i)
    if (f[i] != 0) return false;
  return true;
}

/// An expected gradient being assembled: weights per gradient_of, or biased.
struct expectation {
  std::array<double, 9> weight{};
  std::array<double, 9> per_length{};  ///< weights to divide by the sequence length T
  bool biased = false;
  std::string reason;
  void add(gradient_of g, double w) { weight[std::size_t(g)] += w; }
  void fail(std::string why) {
    if (!biased) reason = std::move(why);
    biased = true;
  }
};

inline const char* abs_reason() {
  return "|s| and sign(s) alone are the score-function coefficients of no divergence";
}

/// E_pi[f(s) g] per state, summed over the sampling policy's states with states frozen:
///   1 -> 0,  s -> grad RKL,  rho -> -grad FKL,  s^2/2 -> grad E[k2] - grad RKL,
///   |s| + sign(s) -> grad E|s|  (either alone is no divergence's gradient).
inline void per_state_map(const function& f, expectation& e) {
  e.add(gradient_of::rkl_token, f[s_fn] - f[half_square_fn]);
  e.add(gradient_of::fkl_token, -f[rho_fn]);
  e.add(gradient_of::k2_token, f[half_square_fn]);
  if (f[abs_fn] != f[sign_fn]) e.fail(abs_reason());
  e.add(gradient_of::abs_token, f[abs_fn]);
}

/// E[sum_t g_t sum_{t' >= t} f(s_t')] on-policy, the score-function gradient of a per-token
/// reward f held fixed: grad E[sum_t f(s_t)] - E[sum_t f'(s_t) g_t], i.e.
///   1 -> 0,  s -> grad KL_seq,  rho -> -fkl_token,  s^2/2 -> grad E[sum k2] - rkl_token.
inline void reward_to_go_map(const function& f, expectation& e) {
  e.add(gradient_of::rkl, f[s_fn]);
  e.add(gradient_of::fkl_token, -f[rho_fn]);
  e.add(gradient_of::k2_sum, f[half_square_fn]);
  e.add(gradient_of::rkl_token, -f[half_square_fn]);
  if (f[abs_fn] != 0 || f[sign_fn] != 0) e.fail(abs_reason());
}

/// E_pi[F(S) G] with G = sum_t g_t the sequence's score: the one-state identities on the
/// distribution of whole sequences.
inline void sequence_map(const function& f, expectation& e) {
  e.add(gradient_of::rkl, f[s_fn] - f[half_square_fn]);
  e.add(gradient_of::fkl, -f[rho_fn]);
  e.add(gradient_of::k2_of_sum, f[half_square_fn]);
  if (f[abs_fn] != f[sign_fn]) e.fail(abs_reason());
  e.add(gradient_of::abs_of_sum, f[abs_fn]);
}

inline std::string describe(gradient_of g, bool one_state, bool mu_states) {
  const std::string states = mu_states ? "mu's" : "pi's";
  switch (g) {
    case gradient_of::rkl:
      return one_state ? "grad KL(pi||ref)" : "the whole grad KL_seq(pi||ref)";
    case gradient_of::fkl:
      return one_state ? "grad KL(ref||pi)" : "grad KL(ref||pi) of whole sequences";
    case gradient_of::rkl_token:
      return one_state ? "grad KL(pi||ref)"
                       : "part 1 only: grad KL(pi_h||ref_h) per state under " + states +
                             " states, states frozen (misses the token's effect on future KL)";
    case gradient_of::fkl_token:
      return one_state ? "grad KL(ref||pi)"
                       : "grad KL(ref_h||pi_h) per state under " + states +
                             " states, not the sequence KL(ref||pi)";
    case gradient_of::k2_token:
      return one_state ? "grad E[s^2/2]" : "grad E[s^2/2] per state under " + states + " states";
    case gradient_of::abs_token:
      return one_state ? "grad E|s|" : "grad E|s| per state under " + states + " states";
    case gradient_of::k2_sum: return "grad E[sum_t s_t^2/2]";
    case gradient_of::k2_of_sum: return "grad E[S^2/2] of the sequence log-ratio S";
    case gradient_of::abs_of_sum: return "grad E|S| of the sequence log-ratio S";
  }
  return "?";
}

inline follows finish(const expectation& e, bool one_state, bool mu_states) {
  follows out;
  out.behavior_states = mu_states && !one_state;
  if (e.biased) {
    out.kind = follows::biased;
    out.name = "none";
    out.sentence = "biased, follows no divergence's gradient: " + e.reason;
    return out;
  }
  for (auto g : all_gradients) {
    const double w = e.weight[std::size_t(g)];
    if (w == 0) continue;
    gradient_of what = g;
    if (one_state && g == gradient_of::rkl_token) what = gradient_of::rkl;
    if (one_state && g == gradient_of::fkl_token) what = gradient_of::fkl;
    bool merged = false;
    for (auto& t : out.terms)
      if (t.what == what) {
        t.weight += w;
        merged = true;
      }
    if (!merged) out.terms.push_back({what, w, false});
  }
  for (auto g : all_gradients)
    if (e.per_length[std::size_t(g)] != 0)
      out.terms.push_back({g, e.per_length[std::size_t(g)], true});
  std::vector<gradient_term> kept;
  for (const auto& t : out.terms)
    if (t.weight != 0) kept.push_back(t);
  // Positive terms first, so that names read "E[k2] - rkl" rather than "-rkl + E[k2]".
  std::stable_partition(kept.begin(), kept.end(), [](const gradient_term& t) { return t.weight > 0; });
  out.terms = kept;
  if (out.terms.empty()) {
    out.kind = follows::zero;
    out.name = "zero";
    out.sentence = "zero in expectation: no regularisation at all, only noise";
    return out;
  }
  out.kind = follows::exact;
  for (const auto& t : out.terms) {
    const double a = std::abs(t.weight);
    if (out.name.empty())
      out.name = t.weight < 0 ? "-" : "";
    else
      out.name += t.weight < 0 ? " - " : " + ";
    if (t.per_length)
      out.name += (a != 1 ? format_number(a) : std::string("1")) + "/T ";
    else if (a != 1)
      out.name += format_number(a) + " ";
    out.name += std::string(to_string(t.what, one_state));
    if (out.behavior_states && per_state(t.what)) out.name += "(mu)";
  }
  if (out.terms.size() == 1 && out.terms[0].weight == 1 && !out.terms[0].per_length) {
    out.sentence = "follows " + describe(out.terms[0].what, one_state, mu_states);
  } else if (out.terms.size() == 1 && !out.terms[0].per_length) {
    out.sentence = "follows " + format_number(out.terms[0].weight) + " times " +
                   describe(out.terms[0].what, one_state, mu_states);
  } else {
    out.sentence = "follows exactly " + out.name + ", a combination that is no single "
                   "divergence's gradient";
  }
  return out;
}

/// The coefficient of a spec as weights on its parts: c = aR R + aA A + aD D, with R the
/// in-reward penalty, A the as-loss value and D its derivative at the spec's level
/// (score_function_weights), and whether every token is dropped.
struct parts : score_weights {
  bool zero = false;
};

/// The parts on-policy (w = 1 exactly): a truncation below 1 makes the weight the constant
/// C, which passes no gradient (a differentiable weight then gives the in-reward part
/// nothing); a band that excludes 1 drops every token.
inline parts on_policy_parts(const spec& s) {
  const importance& is = s.importance;
  const bool truncated = is.active() && is.truncated() && is.clip < 1.0;
  const double used = truncated ? is.clip : 1.0;
  parts p;
  static_cast<score_weights&>(p) =
      score_function_weights(s.term.where, is.mode, used, truncated ? 0.0 : used);
  p.zero = is.active() && is.masked() && !(is.mask_lo <= 1.0 && 1.0 <= is.mask_hi);
  return p;
}

/// The parts off-policy with an exact (untruncated, unmasked) weight: E_mu[w f] = E_pi[f]
/// per state, so the weight counts as 1 with derivative 1.
inline parts off_policy_parts(const spec& s) {
  parts p;
  static_cast<score_weights&>(p) = score_function_weights(s.term.where, s.importance.mode, 1, 1);
  return p;
}

inline follows cell(const spec& s, const term_functions& k, bool one_state, bool off_policy) {
  expectation e;
  const importance& is = s.importance;
  if (off_policy) {
    if (!is.active()) {
      e.fail("samples from mu with no importance weight");
      return finish(e, one_state, true);
    }
    if (is.truncated() || is.masked()) {
      e.fail(is.truncated() ? "the weight is truncated at is-clip (bounded variance, biased)"
                            : "the is-mask band drops tokens with extreme weights");
      return finish(e, one_state, true);
    }
  }
  const parts p = off_policy ? off_policy_parts(s) : on_policy_parts(s);
  if (p.zero) return finish(e, one_state, off_policy);
  const function& value = k.value;
  const function& derivative = k.derivative;
  // The in-reward penalty R and the as-loss function A, D of the token (or of S).
  const function reward = combine(p.reward, value, 0, value);
  const function loss = combine(p.loss_value, value, p.loss_derivative, derivative);
  // Sequence-level weights (is-level): on one state every product of ratios is w itself.
  const weight_level wl = is.active() && !one_state ? is.level : weight_level::token;
  if (wl == weight_level::prefix) {
    // W_{1:t} makes E_mu[W_{1:t} f(y_{1:t})] = E_pi[f]: per-state identities under pi's
    // states. A differentiable W_{1:t} also passes its gradient to every earlier token, so
    // the weighted terms act as a reward-to-go: the surrogate's expectation is
    // E_pi[sum_t X_t] as a function of the parameters.
    if (p.loss_value == 0 && !(is.mode == weighting::differentiable && !(is.truncated() && is.clip < 1))) {
      per_state_map(combine(1, reward, 1, loss), e);
    } else {
      reward_to_go_map(combine(1, reward, p.loss_value, value), e);
      per_state_map(combine(p.loss_derivative, derivative, 0, derivative), e);
    }
    return finish(e, one_state, false);
  }
  if (wl == weight_level::per_decision) {
    // c_t = sum_{t'>=t} gamma^(t'-t) W_{1:t'} k(s_t'): the on-policy reward-to-go, from mu too.
    if (s.gamma == 0) {
      per_state_map(reward, e);
    } else if (s.gamma != 1) {
      if (!constant(reward)) e.fail("gamma < 1 discounts the token's effect on future KL");
    } else {
      reward_to_go_map(reward, e);
    }
    return finish(e, one_state, false);
  }
  if (wl == weight_level::sequence_mean) {
    if (off_policy) {
      e.fail("the geometric-mean sequence ratio exp(mean_t log w_t) is no importance weight");
      return finish(e, one_state, true);
    }
    if (is.mode == weighting::differentiable && !(is.truncated() && is.clip < 1) &&
        s.level == level::token) {
      // d w_seq / d lp_j = w_seq / n_b: token j gets (1/T) sum_t X_t, X_t its weighted
      // terms, besides its own as-loss derivative. (At level=sequence the n_b shares of
      // the sequence's one term add up to the usual per-sequence weight gradient.)
      expectation spread;
      reward_to_go_map(combine(1, reward, p.loss_value, value), spread);
      per_state_map(combine(p.loss_derivative, derivative, 0, derivative), e);
      e.per_length = spread.weight;
      if (spread.biased) e.fail(spread.reason);
      return finish(e, one_state, false);
    }
  }
  level lv = s.level;
  if (lv == level::to_go && s.gamma == 0) lv = level::token;  // R_t = k_t
  if (one_state || lv == level::token) {
    per_state_map(combine(1, reward, 1, loss), e);
    return finish(e, one_state, off_policy);
  }
  // Over sequences, at level to-go or sequence.
  if (off_policy) {
    if (!constant(reward) || !constant(loss))
      e.fail("a token's own weight w_t does not reweight the later tokens drawn from mu "
             "(only per-decision weights would)");
    return finish(e, one_state, true);
  }
  if (lv == level::to_go && s.gamma != 1) {
    if (!constant(reward)) e.fail("gamma < 1 discounts the token's effect on future KL");
    return finish(e, one_state, false);
  }
  // gamma = 1 to-go, or the sequence total (earlier tokens add nothing in expectation).
  reward_to_go_map(reward, e);
  if (lv == level::sequence) sequence_map(loss, e);
  return finish(e, one_state, false);
}

inline std::string phrase(const follows& f) {
  switch (f.kind) {
    case follows::exact: return "follows " + f.name;
    case follows::zero: return "has zero expected gradient";
    case follows::biased: return "is biased";
    case follows::unknown: return "is unknown to explain";
  }
  return "?";
}

}  // namespace detail

namespace detail {
inline follows unknown_cell() {
  follows f;
  f.kind = follows::unknown;
  f.name = "unknown";
  f.sentence = "unknown: the estimator has no closed form on explain's basis (1, s, e^-s, "
               "s^2/2, |s|, sign s); measure it with the exact oracle (oracle::enumerate)";
  return f;
}

inline verdict explain_with(const spec& s, const term_functions* k) {
  verdict v;
  v.spec = to_string(s);
  auto at = [&](bool one_state, bool off_policy) {
    return k ? cell(s, *k, one_state, off_policy) : unknown_cell();
  };
  v.on_policy_token = at(true, false);
  v.on_policy_sequence = at(false, false);
  v.off_policy_token = at(true, true);
  v.off_policy_sequence = at(false, true);
  auto on_both_levels = [](const follows& one, const follows& seq) {
    if (one.name == seq.name) return phrase(one) + " on one state and over sequences";
    const bool short_form = one.kind == follows::exact && seq.kind == follows::exact;
    return phrase(one) + " on one state and " + (short_form ? seq.name : phrase(seq)) +
           " over sequences";
  };
  std::string off = on_both_levels(v.off_policy_token, v.off_policy_sequence);
  if (v.off_policy_token.kind == follows::biased && v.off_policy_sequence.kind == follows::biased)
    off = "is biased (" + v.off_policy_token.sentence.substr(v.off_policy_token.sentence.find(": ") + 2) + ")";
  v.sentence = v.spec + ": on-policy " + on_both_levels(v.on_policy_token, v.on_policy_sequence) +
               "; from mu " + off + ".";
  if (s.clamp.active())
    v.sentence += " The clamp changes coefficients where it binds (there it passes no or a "
                  "clipped gradient); the verdicts hold where it does not.";
  return v;
}
}  // namespace detail

/// explain() with estimator types of your own (as evaluate<Ev, Eg>): the spec gives
/// everything but the estimators. Verdicts need both types' closed forms (has_closed_form);
/// without them every cell is follows::unknown.
template <class Ev, class Eg = Ev>
verdict explain(const spec& s) {
  static_assert(require_estimator<Ev>() && require_estimator<Eg>());
  if constexpr (has_closed_form<Ev>::value && has_closed_form<Eg>::value) {
    const detail::term_functions k{detail::on_basis(Ev::value_form),
                                   detail::on_basis(Eg::derivative_form)};
    return detail::explain_with(s, &k);
  } else {
    return detail::explain_with(s, nullptr);
  }
}

/// The verdict on a spec, from the theory of docs/theory.md, tables 3-5 (not from running the
/// oracle; tests/test_explain.cpp checks every verdict against it).
///  - token cells (one state): E[c g] per the one-state identities (s -> RKL, 1 - rho -> FKL,
///    1 -> 0, ...); with a detached or differentiable weight the same from mu.
///  - sequence cells: at level=token the same per state, summed over the sampling policy's
///    states with states frozen (rkl_token, fkl_token; "(mu)" off-policy); at level=to-go
///    with gamma = 1 or level=sequence the in-reward penalty acts as a reward-to-go and the
///    as-loss term on S as a one-state term on whole sequences; gamma < 1, and any level
///    other than token off-policy (a token's weight does not correct its future), are
///    biased unless the coefficient is constant.
///  - off-policy with no weight, a truncated weight or a band mask: biased.
inline verdict explain(const spec& s) {
  return visit(s.term.value_estimator, [&](auto value) {
    return visit(s.term.gradient_estimator, [&](auto gradient) {
      return explain<decltype(value), decltype(gradient)>(s);
    });
  });
}

inline verdict explain(std::string_view text) { return explain(parse_spec(text)); }

}  // namespace klgrad
