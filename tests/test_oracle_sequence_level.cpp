// SPEC section 5 (token level versus sequence level), proved through klgrad::evaluate
// against the exact oracle on autoregressive policies (T = 2, 3; categorical cases where
// the statement covers T = 1 too).
#include "oracle_cases.hpp"

using namespace oracle_test;

namespace {

void check_whole_gradient(const std::string& text) {
  for (const auto& c : cases()) {
    INFO(text << " on " << c.name());
    CHECK(relative_error(expect(text, c).gradient, rkl_gradient(c.pi, c.ref)) < exact_tolerance);
  }
}

}  // namespace

TEST_CASE("table 5: per-token k2-as-loss and k1-in-reward give part 1 only, missing part 2 "
          "whenever T >= 2",
          "[oracle][table5][negative]") {
  for (const char* text : {"k2-as-loss", "k1-in-reward"}) {
    for (const auto& c : sequence_cases()) {
      INFO(text << " on " << c.name());
      const vector g = expect(text, c).gradient;
      const vector whole = rkl_gradient(c.pi, c.ref), part1 = rkl_token_gradient(c.pi, c.ref);
      CHECK(relative_error(g, part1) < exact_tolerance);
      CHECK(relative_error(g, whole) > miss_tolerance);
      // What is missing is part 2, E[sum_t g_t sum_{t'>t} s_t'], which is not zero.
      CHECK((whole - g).norm() > miss_tolerance * whole.norm());
    }
  }
}

TEST_CASE("table 5: the exact per-state RKL gradient from full logits is part 1",
          "[oracle][table5]") {
  // Part 1 by its definition E[sum_t g_t s_t], summed over the outcomes directly.
  for (const auto& c : sequence_cases()) {
    INFO(c.name());
    const sequences y = all_sequences(c.vocab, c.steps);
    const matrix lpr = c.pi.log_probs();
    const matrix lp = token_log_probs(c.pi, lpr, y), lr = token_log_probs(c.ref, c.ref.log_probs(), y);
    vector g = vector::Zero(c.pi.parameters());
    for (Index b = 0; b < y.rows(); ++b) {
      const double p = std::exp(lp.row(b).sum());
      for (Index t = 0; t < c.steps; ++t) {
        const Index r = token_row(c.pi, y, b, t);
        g.segment(r * c.vocab, c.vocab) +=
            p * (lp(b, t) - lr(b, t)) * score(lpr.row(r).transpose().array().exp().matrix(), y(b, t));
      }
    }
    CHECK(relative_error(rkl_token_gradient(c.pi, c.ref), g) < 1e-12);
  }
}

TEST_CASE("table 5: k1-in-reward as reward-to-go (gamma = 1) gives the whole gradient",
          "[oracle][table5]") {
  check_whole_gradient("k1-in-reward,level=to-go");
}

TEST_CASE("table 5: k1-in-reward with the sequence sum broadcast gives the whole gradient",
          "[oracle][table5]") {
  check_whole_gradient("k1-in-reward,level=sequence");
}

TEST_CASE("table 5: k2-as-loss on the sequence log-ratio gives the whole gradient",
          "[oracle][table5]") {
  check_whole_gradient("k2-as-loss,level=sequence");
}

TEST_CASE("table 5: reward-to-go with gamma < 1 follows no target", "[oracle][table5][negative]") {
  for (const char* text : {"k1-in-reward,level=to-go,gamma=0.9", "k1-in-reward,level=to-go,gamma=0.5"}) {
    for (const auto& c : sequence_cases()) {
      INFO(text << " on " << c.name());
      const vector g = expect(text, c).gradient;
      for (const auto& [name, target] : audit_targets(c)) {
        INFO("target " << name);
        CHECK(relative_error(g, target) > miss_tolerance);
      }
    }
  }
}

TEST_CASE("table 5: per-token k3-as-loss gives the local FKL under pi's states, not the "
          "sequence FKL",
          "[oracle][table5][negative]") {
  for (const auto& c : sequence_cases()) {
    INFO(c.name());
    const vector g = expect("k3-as-loss", c).gradient;
    CHECK(relative_error(g, fkl_token_gradient(c.pi, c.ref)) < exact_tolerance);
    CHECK(relative_error(g, fkl_gradient(c.pi, c.ref)) > miss_tolerance);
  }
}

TEST_CASE("table 5: a per-token weight w_t gives the per-state RKL gradient under mu's state "
          "distribution",
          "[oracle][table5]") {
  for (const char* text : {"k2-as-loss,is=detached", "k3-as-loss,is=differentiable"}) {
    for (const auto& c : sequence_cases()) {
      INFO(text << " from mu on " << c.name());
      const vector g = expect(text, c, true).gradient;
      CHECK(relative_error(g, rkl_token_gradient(c.pi, c.ref, state_distribution(c.mu))) < exact_tolerance);
      for (const auto& [name, target] : audit_targets(c)) {
        INFO("target " << name);
        CHECK(relative_error(g, target) > miss_tolerance);
      }
    }
  }
}
