// klgrad eval: a batch in JSON, a spec, and the per-token values and coefficients out.
#include "commands.hpp"

#include <klgrad/klgrad.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace klgrad::cli {
namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A number, or null for NaN (JSON has no NaN; masked slots may hold one).
template <class T>
T number(const nlohmann::json& x, const std::string& where) {
  if (x.is_null()) return std::numeric_limits<T>::quiet_NaN();
  if (!x.is_number()) throw usage_error(where + " must be a number or null, got " + x.dump());
  return x.get<T>();
}

/// A B x T array from a list of equal-length rows.
template <class T>
rows<T> matrix(const nlohmann::json& x, const char* name) {
  if (!x.is_array() || x.empty() || !x[0].is_array())
    throw usage_error(std::string(name) + " must be a list of rows (padded batch)");
  const Eigen::Index b = Eigen::Index(x.size()), t = Eigen::Index(x[0].size());
  rows<T> out(b, t);
  for (Eigen::Index i = 0; i < b; ++i) {
    const auto& row = x[std::size_t(i)];
    if (!row.is_array() || Eigen::Index(row.size()) != t)
      throw usage_error(std::string(name) + " row " + std::to_string(i) + " has " +
                        std::to_string(row.is_array() ? row.size() : 0) + " entries, row 0 has " +
                        std::to_string(t));
    for (Eigen::Index j = 0; j < t; ++j)
      out(i, j) = number<T>(row[std::size_t(j)],
                            std::string(name) + "[" + std::to_string(i) + "][" +
                                std::to_string(j) + "]");
  }
  return out;
}

template <class T>
Eigen::Array<T, Eigen::Dynamic, 1> vector(const nlohmann::json& x, const char* name) {
  if (!x.is_array()) throw usage_error(std::string(name) + " must be a list");
  Eigen::Array<T, Eigen::Dynamic, 1> out(Eigen::Index(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i)
    out(Eigen::Index(i)) = number<T>(x[i], std::string(name) + "[" + std::to_string(i) + "]");
  return out;
}

template <class A>
nlohmann::json to_json(const A& a, bool as_rows) {
  nlohmann::json out = nlohmann::json::array();
  if (as_rows) {
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
      nlohmann::json row = nlohmann::json::array();
      for (Eigen::Index j = 0; j < a.cols(); ++j) row.push_back(double(a(i, j)));
      out.push_back(row);
    }
  } else {
    for (Eigen::Index i = 0; i < a.size(); ++i) out.push_back(double(a(i)));
  }
  return out;
}

nlohmann::json summary_json(const spec& s, const summary& r) {
  return {{"spec", to_string(s)},       {"loss", r.loss},         {"kl", r.kl},
          {"kl_sequence", r.kl_sequence}, {"tokens", r.tokens},   {"sequences", r.sequences},
          {"guarded", r.guarded},       {"dropped", r.dropped}};
}

template <class T>
nlohmann::json evaluate_json(const spec& s, const nlohmann::json& in, const options& opt) {
  for (const char* key : {"logp", "ref"})
    if (!in.contains(key)) throw usage_error(std::string("input has no '") + key + "'");
  const bool has_behavior = in.contains("behavior"), has_mask = in.contains("mask");
  nlohmann::json out;
  if (in.contains("offsets")) {
    const auto lp = vector<T>(in["logp"], "logp"), lr = vector<T>(in["ref"], "ref");
    const auto off = vector<double>(in["offsets"], "offsets");
    Eigen::Array<Eigen::Index, Eigen::Dynamic, 1> offsets(off.size());
    for (Eigen::Index i = 0; i < off.size(); ++i) {
      if (off(i) != std::floor(off(i)))
        throw usage_error("offsets[" + std::to_string(i) + "] is not an integer");
      offsets(i) = Eigen::Index(off(i));
    }
    Eigen::Array<T, Eigen::Dynamic, 1> value(lp.size()), coef(lp.size());
    const auto mask = has_mask ? vector<T>(in["mask"], "mask") : Eigen::Array<T, Eigen::Dynamic, 1>();
    const auto lb = has_behavior ? vector<T>(in["behavior"], "behavior")
                                 : Eigen::Array<T, Eigen::Dynamic, 1>();
    auto run = [&](auto batch) {
      return has_behavior ? evaluate(s, batch.with_behavior(lb), value, coef, opt)
                          : evaluate(s, batch, value, coef, opt);
    };
    const summary r = has_mask ? run(packed(lp, lr, offsets, mask)) : run(packed(lp, lr, offsets));
    out = summary_json(s, r);
    out["value"] = to_json(value, false);
    out["coef"] = to_json(coef, false);
  } else {
    const auto lp = matrix<T>(in["logp"], "logp"), lr = matrix<T>(in["ref"], "ref");
    rows<T> value(lp.rows(), lp.cols()), coef(lp.rows(), lp.cols());
    const auto mask = has_mask ? matrix<T>(in["mask"], "mask") : rows<T>();
    const auto lb = has_behavior ? matrix<T>(in["behavior"], "behavior") : rows<T>();
    auto run = [&](auto batch) {
      return has_behavior ? evaluate(s, batch.with_behavior(lb), value, coef, opt)
                          : evaluate(s, batch, value, coef, opt);
    };
    const summary r = has_mask ? run(padded(lp, lr, mask)) : run(padded(lp, lr));
    out = summary_json(s, r);
    out["value"] = to_json(value, true);
    out["coef"] = to_json(coef, true);
  }
  return out;
}

}  // namespace

void add_eval(CLI::App& app) {
  struct settings {
    std::string spec, input, type = "double", nonfinite = "raise";
    Eigen::Index tokens = -1, sequences = -1;
  };
  auto cfg = std::make_shared<settings>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Evaluate a spec on a batch given as JSON: {\"logp\", \"ref\", optional \"behavior\", "
      "optional \"mask\"} as lists of rows (padded), or 1-D lists plus \"offsets\" (packed); "
      "null stands for NaN. Prints JSON: spec, value, coef, loss, kl, kl_sequence, tokens, "
      "sequences, guarded, dropped.");
  cmd->add_option("--spec", cfg->spec, "KL spec, e.g. k3-as-loss,is=detached,beta=0.04")->required();
  cmd->add_option("input", cfg->input, "JSON batch file (stdin when absent or -)");
  cmd->add_option("--type", cfg->type, "precision of the computation")
      ->check(CLI::IsMember({"float", "double"}));
  cmd->add_option("--nonfinite", cfg->nonfinite, "non-finite unmasked inputs: raise or propagate")
      ->check(CLI::IsMember({"raise", "propagate"}));
  cmd->add_option("--tokens", cfg->tokens, "global N_tokens (data-parallel shard)");
  cmd->add_option("--sequences", cfg->sequences, "global B_nonempty (data-parallel shard)");
  cmd->callback([cfg] {
    const spec s = parse_spec(cfg->spec);
    options opt;
    opt.counts.tokens = cfg->tokens;
    opt.counts.sequences = cfg->sequences;
    opt.nonfinite = cfg->nonfinite == "raise" ? nonfinite_policy::raise : nonfinite_policy::propagate;
    const nlohmann::json in = read_json(cfg->input);
    const nlohmann::json out = cfg->type == "float" ? evaluate_json<float>(s, in, opt)
                                                    : evaluate_json<double>(s, in, opt);
    std::cout << out.dump() << "\n";
  });
}

}  // namespace klgrad::cli
