// klgrad::explain (explain.hpp): every verdict, derived from the theory, checked against the
// exact oracle's audit: enumerate() through klgrad::evaluate on random tabular policies
// (V = 3; T = 1 for the one-state cells, T = 2 and 3 for the sequence cells), on-policy and
// with a behaviour policy, for every estimator x placement x is x level of the grammar and
// some truncations, bands, gammas and straight-through terms.
#include <klgrad/explain.hpp>

#include "oracle_cases.hpp"

#include <cmath>
#include <random>
#include <string>
#include <vector>

using namespace oracle_test;

namespace {

/// grad E_pi[Phi(s_1..s_T)] by the chain rule over every outcome:
///   sum_y p(y) [Phi(y) G(y) + sum_t dPhi/ds_t score_t(y)],  G = sum_t score_t,
/// exact (no sampling), and independent of klgrad::evaluate.
template <class Phi, class DPhi>
vector sequence_objective_gradient(const tabular& pi, const tabular& ref, Phi phi, DPhi dphi) {
  const sequences y = all_sequences(pi.vocab, pi.steps);
  const matrix lpr = pi.log_probs();
  const matrix lp = token_log_probs(pi, lpr, y), lr = token_log_probs(ref, ref.log_probs(), y);
  const matrix pr = lpr.array().exp().matrix();
  vector g = vector::Zero(pi.parameters());
  for (Index b = 0; b < y.rows(); ++b) {
    const double p = std::exp(lp.row(b).sum());
    const vector s = (lp.row(b) - lr.row(b)).transpose();
    const double value = phi(s);
    const vector d = dphi(s);
    for (Index t = 0; t < pi.steps; ++t) {
      const Index r = token_row(pi, y, b, t);
      const double c = p * (value + d(t));
      g.segment(r * pi.vocab, pi.vocab) -= c * pr.row(r).transpose();
      g(r * pi.vocab + y(b, t)) += c;
    }
  }
  return g;
}

double sign(double x) { return double((x > 0) - (x < 0)); }

/// The exact gradient a verdict term names, on the policies of a case; per-state terms under
/// pi's or mu's state distribution.
vector gradient(klgrad::gradient_of g, const policy_case& c, bool mu_states) {
  const vector d = state_distribution(mu_states ? c.mu : c.pi);
  using klgrad::gradient_of;
  switch (g) {
    case gradient_of::rkl: return rkl_gradient(c.pi, c.ref);
    case gradient_of::fkl: return fkl_gradient(c.pi, c.ref);
    case gradient_of::rkl_token: return rkl_token_gradient(c.pi, c.ref, d);
    case gradient_of::fkl_token: return fkl_token_gradient(c.pi, c.ref, d);
    case gradient_of::k2_token: return k2_token_gradient(c.pi, c.ref, d);
    case gradient_of::abs_token:
      return token_gradient(c.pi, c.ref, d, [](const vector& lp, const vector& lr) {
        return expectation_gradient(lp, lr, [](double s) { return std::abs(s); },
                                    [](double s) { return sign(s); });
      });
    case gradient_of::k2_sum:
      return sequence_objective_gradient(
          c.pi, c.ref, [](const vector& s) { return 0.5 * s.squaredNorm(); },
          [](const vector& s) { return s; });
    case gradient_of::k2_of_sum:
      return sequence_objective_gradient(
          c.pi, c.ref, [](const vector& s) { return 0.5 * s.sum() * s.sum(); },
          [](const vector& s) { return vector(vector::Constant(s.size(), s.sum())); });
    case gradient_of::abs_of_sum:
      return sequence_objective_gradient(
          c.pi, c.ref, [](const vector& s) { return std::abs(s.sum()); },
          [](const vector& s) { return vector(vector::Constant(s.size(), sign(s.sum()))); });
  }
  return {};
}

/// Checks one verdict cell against the exact expectation on one case. Returns the failure
/// description, or "" when it holds.
std::string check_cell(const klgrad::follows& f, const klgrad::spec& s, const policy_case& c,
                       bool from_mu) {
  const exact_expectation e = enumerate(s, c.pi, c.ref, from_mu ? &c.mu : nullptr);
  const targets t = exact_targets(c.pi, c.ref);
  const double scale = t.rkl_gradient.norm() + t.fkl_gradient.norm();
  switch (f.kind) {
    case klgrad::follows::zero:
      if (e.gradient.norm() > 1e-12 * scale)
        return "claimed zero, |E g| = " + std::to_string(e.gradient.norm());
      return "";
    case klgrad::follows::exact: {
      vector want = vector::Zero(c.pi.parameters());
      for (const auto& term : f.terms)
        want += term.weight / (term.per_length ? double(c.steps) : 1.0) *
                gradient(term.what, c, f.behavior_states);
      const double err = relative_error(e.gradient, want);
      if (err > 1e-9) return "claimed " + f.name + ", relative error " + std::to_string(err);
      return "";
    }
    case klgrad::follows::biased: {
      for (const auto& [name, target] : audit_targets(c)) {
        const double err = relative_error(e.gradient, target);
        if (err < miss_tolerance)
          return "claimed none, but matches " + name + " (relative error " + std::to_string(err) + ")";
      }
      // A band mask can drop every sampled token of a small policy: zero, but still biased.
      if (!s.importance.masked() && e.gradient.norm() < 1e-9 * scale)
        return "claimed none, but the gradient is zero";
      return "";
    }
    case klgrad::follows::unknown:  // only for estimator types without a closed form
      return "claimed unknown for a shipped estimator";
  }
  return "unknown kind";
}

/// Every spec of the grammar's main axes, plus truncation, bands, gammas, straight-through.
std::vector<std::string> grammar() {
  std::vector<std::string> out;
  for (const char* e : {"k1", "k2", "k3", "abs"})
    for (const char* p : {"in-reward", "as-loss", "both"})
      for (const char* is : {"none", "detached", "differentiable"})
        for (const char* lv : {"token", "to-go", "sequence"}) {
          const std::string text = std::string(e) + "-" + p + ",is=" + is + ",level=" + lv;
          try {
            klgrad::parse_spec(text);
            out.push_back(text);
          } catch (const klgrad::spec_error&) {
            // to-go with an as-loss part is not a configuration
          }
        }
  // Sequence-level importance weights (is-level), where the grammar allows them.
  for (const char* e : {"k1", "k2", "k3", "abs"})
    for (const char* p : {"in-reward", "as-loss", "both"})
      for (const char* is : {"detached", "differentiable"})
        for (const char* wl : {"prefix", "per-decision", "sequence-mean"})
          for (const char* lv : {"token", "sequence"})
            for (const char* gamma : {"1", "0.5", "0"}) {
              std::string text = std::string(e) + "-" + p + ",is=" + is + ",is-level=" + wl +
                                 ",level=" + lv;
              if (std::string(gamma) != "1") text += std::string(",gamma=") + gamma;
              try {
                klgrad::parse_spec(text);
                out.push_back(text);
              } catch (const klgrad::spec_error&) {
              }
            }
  for (const char* text :
       {"k1-in-reward,level=to-go,gamma=0.5", "k3-in-reward,level=to-go,gamma=0.9",
        "k2-in-reward,level=to-go,gamma=0", "k1-in-reward,is=detached,level=to-go,gamma=0",
        "k2-as-loss,is=detached,is-clip=1", "k3-as-loss,is=differentiable,is-clip=1",
        "k2-as-loss,is=detached,is-clip=0.5", "k3-as-loss,is=differentiable,is-clip=0.5",
        // a differentiable weight truncated on-policy passes no gradient to the reward part
        "k1-in-reward,is=differentiable,is-clip=0.5", "k3-both,is=differentiable,is-clip=0.5",
        "k2-in-reward,is=detached,is-clip=0.5",
        "k1-in-reward,is=detached,is-mask=0.5:2", "k2-as-loss,is=detached,is-mask=1.2:5",
        "k3~k2-as-loss", "k3~k2-as-loss,is=detached", "k1~k3-both", "k2~k1-in-reward",
        "k3~k2-both,level=sequence", "k1~k2-as-loss,is=differentiable,level=sequence",
        "k2-as-loss,agg=seq-mean-token-mean,beta=0.05"})
    out.push_back(text);
  return out;
}

}  // namespace

TEST_CASE("explain: the chain-rule gradients of the test agree with the oracle's", "[explain][oracle]") {
  for (const auto& c : cases()) {
    INFO(c.name());
    const vector kl = sequence_objective_gradient(
        c.pi, c.ref, [](const vector& s) { return s.sum(); },
        [](const vector& s) { return vector(vector::Ones(s.size())); });
    CHECK(relative_error(kl, rkl_gradient(c.pi, c.ref)) < 1e-12);
    const vector k2 = sequence_objective_gradient(
        c.pi, c.ref, [](const vector& s) { return 0.5 * s.squaredNorm(); },
        [](const vector& s) { return s; });
    const vector fd = finite_difference_gradient(
        of_parameters(c.vocab, c.steps,
                      [&](const tabular& p) {
                        const sequences y = all_sequences(p.vocab, p.steps);
                        const matrix lp = token_log_probs(p, p.log_probs(), y);
                        const matrix lr = token_log_probs(c.ref, c.ref.log_probs(), y);
                        const vector w = lp.rowwise().sum().array().exp().matrix();
                        return w.dot(0.5 * (lp - lr).rowwise().squaredNorm());
                      }),
        c.pi.parameter_vector());
    CHECK(relative_error(k2, fd) < 1e-8);
  }
}

TEST_CASE("explain: every verdict holds against the exact oracle", "[explain][oracle]") {
  std::mt19937_64 rng(77);
  const Index V = 3;
  // Two random draws per size: a verdict must hold on each.
  std::vector<policy_case> one_state, sequences_cases;
  for (int draw = 0; draw < 2; ++draw) {
    for (Index T : {1, 2, 3}) {
      policy_case c{V, T, tabular::random(V, T, rng), tabular::random(V, T, rng),
                    tabular::random(V, T, rng)};
      (T == 1 ? one_state : sequences_cases).push_back(c);
    }
  }
  int checked = 0, exact = 0, zero = 0, biased = 0;
  for (const std::string& text : grammar()) {
    const klgrad::spec s = klgrad::parse_spec(text);
    const klgrad::verdict v = klgrad::explain(s);
    CHECK(v.spec == klgrad::to_string(s));
    CHECK(!v.sentence.empty());
    const std::pair<const klgrad::follows*, bool> token_cells[] = {{&v.on_policy_token, false},
                                                                   {&v.off_policy_token, true}};
    const std::pair<const klgrad::follows*, bool> sequence_cells[] = {
        {&v.on_policy_sequence, false}, {&v.off_policy_sequence, true}};
    for (const auto& [cell, from_mu] : token_cells)
      for (const auto& c : one_state) {
        INFO(text << (from_mu ? " from mu" : " on-policy") << " on " << c.name() << ": "
                  << cell->name << " -- " << v.sentence);
        CHECK(check_cell(*cell, s, c, from_mu) == "");
        ++checked;
      }
    for (const auto& [cell, from_mu] : sequence_cells)
      for (const auto& c : sequences_cases) {
        INFO(text << (from_mu ? " from mu" : " on-policy") << " on " << c.name() << ": "
                  << cell->name << " -- " << v.sentence);
        CHECK(check_cell(*cell, s, c, from_mu) == "");
        ++checked;
      }
    for (const auto* cell : {&v.on_policy_token, &v.on_policy_sequence, &v.off_policy_token,
                             &v.off_policy_sequence}) {
      exact += cell->kind == klgrad::follows::exact;
      zero += cell->kind == klgrad::follows::zero;
      biased += cell->kind == klgrad::follows::biased;
    }
  }
  // The grammar exercises all three kinds of verdict.
  CHECK(checked > 500);
  CHECK(exact > 50);
  CHECK(zero > 5);
  CHECK(biased > 50);
}

TEST_CASE("explain: the verdicts SPEC 3-5 name", "[explain]") {
  struct row {
    const char* spec;
    const char* on_token;
    const char* on_sequence;
    const char* off_token;
    const char* off_sequence;
  };
  const row rows[] = {
      {"k1-in-reward", "rkl", "rkl_token", "none", "none"},
      {"k2-as-loss", "rkl", "rkl_token", "none", "none"},
      {"k1-as-loss", "zero", "zero", "none", "none"},
      {"k3-as-loss", "fkl", "fkl_token", "none", "none"},
      {"k3-in-reward", "rkl - fkl", "rkl_token - fkl_token", "none", "none"},
      {"k2-in-reward", "E[k2] - rkl", "E[k2]_token - rkl_token", "none", "none"},
      {"k3-both", "rkl", "rkl_token", "none", "none"},
      {"k2-as-loss,is=detached", "rkl", "rkl_token", "rkl", "rkl_token(mu)"},
      {"k3-as-loss,is=differentiable", "rkl", "rkl_token", "rkl", "rkl_token(mu)"},
      {"k3-as-loss,is=detached", "fkl", "fkl_token", "fkl", "fkl_token(mu)"},
      {"k1-as-loss,is=differentiable", "rkl", "rkl_token", "rkl", "rkl_token(mu)"},
      {"k2-as-loss,is=differentiable", "E[k2]", "E[k2]_token", "E[k2]", "E[k2]_token(mu)"},
      {"k2-as-loss,is=detached,is-clip=2", "rkl", "rkl_token", "none", "none"},
      {"k1-in-reward,level=to-go", "rkl", "rkl", "none", "none"},
      {"k1-in-reward,level=sequence", "rkl", "rkl", "none", "none"},
      {"k2-as-loss,level=sequence", "rkl", "rkl", "none", "none"},
      {"k3-as-loss,level=sequence", "fkl", "fkl", "none", "none"},
      {"k1-in-reward,level=to-go,gamma=0.9", "rkl", "none", "none", "none"},
  };
  for (const auto& r : rows) {
    INFO(r.spec);
    const klgrad::verdict v = klgrad::explain(klgrad::parse_spec(r.spec));
    CHECK(v.on_policy_token.name == r.on_token);
    CHECK(v.on_policy_sequence.name == r.on_sequence);
    CHECK(v.off_policy_token.name == r.off_token);
    CHECK(v.off_policy_sequence.name == r.off_sequence);
  }
  const auto v = klgrad::explain(std::string_view("k3-as-loss"));
  CHECK(v.sentence.find("follows fkl") != std::string::npos);
  CHECK(v.off_policy_token.sentence.find("no importance weight") != std::string::npos);
}
