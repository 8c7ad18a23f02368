// The specs the tests sweep: every valid combination of the grammar's choices.
#pragma once

#include <klgrad/spec/spec.hpp>

#include <string>
#include <vector>

namespace klgrad::test {

/// Every valid combination of the grammar's choices (invalid ones, which parse_spec rejects,
/// are left out): weights and levels crossed with every aggregation, and with clamp
/// policies at one aggregation.
inline std::vector<std::string> all_spec_strings() {
  std::vector<std::string> out;
  const char* ests[] = {"k1", "k2", "k3", "abs"};
  const char* weights[] = {"", ",is=detached", ",is=differentiable",
                           ",is=detached,is-clip=1.3", ",is=differentiable,is-clip=1.3",
                           ",is=differentiable,is-mask=0.6:1.5",
                           ",is=detached,is-level=prefix",
                           ",is=differentiable,is-level=prefix",
                           ",is=differentiable,is-level=prefix,is-clip=1.3,is-mask=0.3:inf",
                           ",is=detached,is-level=per-decision",
                           ",is=detached,is-level=per-decision,gamma=0.9,is-clip=1.5",
                           ",is=detached,is-level=sequence-mean,is-mask=0.8:1.25",
                           ",is=differentiable,is-level=sequence-mean",
                           ",is=differentiable,is-level=sequence-mean,is-clip=1.1"};
  const char* levels[] = {"", ",level=to-go", ",level=to-go,gamma=0.9", ",level=sequence"};
  const char* aggs[] = {"", ",agg=token-sum", ",agg=seq-mean-token-sum",
                        ",agg=seq-mean-token-mean", ",agg=seq-mean-token-sum-norm,agg-norm=9",
                        ",agg=seq-mean-token-mean,agg-eps=0.5,agg-seq-eps=0.25,agg-scale=3",
                        ",agg=token-sum-norm,agg-norm=7,agg-scale=0.5"};
  const char* clamps[] = {",clamp=log-ratio:-2:3/value:-1:2", ",clamp=value:-0.5:1.5/est:k2:k3",
                          ",clamp=log-ratio:-1:1/value:-1:1/after-weight/detach-weight",
                          ",clamp=log-ratio:-1.5:2/value:-inf:0.7/pass-gradient",
                          ",clamp=log-ratio:-1:1/value:-0.5:0.5/after-weight/pass-gradient"};
  auto add = [&](const std::string& s) {
    try {
      parse_spec(s);
      out.push_back(s);
    } catch (const spec_error&) {
    }
  };
  for (auto a : ests)
    for (auto b : ests)
      for (const char* place : {"in-reward", "as-loss", "both"})
        for (auto w : weights)
          for (auto l : levels) {
            std::string term = std::string(a) + (std::string(a) == b ? "" : std::string("~") + b);
            const std::string head = term + "-" + place + w + l;
            for (auto g : aggs) add(head + g + ",beta=0.5");
            for (auto c : clamps) add(head + c + ",agg=token-sum,beta=0.5");
          }
  return out;
}

}  // namespace klgrad::test
