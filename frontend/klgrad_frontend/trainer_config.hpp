// A trainer's own KL configuration, as a flat map of its keys, read into the klgrad specs it
// follows (with the defaults it took and warnings); written once for `klgrad explain
// --trainer` and klgrad.from_trainer_config. docs/explain.md has each trainer's keys, and
// docs/presets.md the source reading (commits, files) behind every default and warning.
#pragma once

#include "explain_json.hpp"
#include "trainer_input.hpp"

#include <klgrad/explain.hpp>
#include <klgrad/spec.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace klgrad::frontend {

using klgrad::detail::format_number;
using klgrad::detail::number_problem;
using klgrad::detail::number_reading;
using klgrad::detail::read_number;

struct trainer_term {
  std::string role;  ///< "loss" or "reward"
  klgrad::spec spec;
  double beta;
};

struct trainer_reading {
  std::string trainer, commit;
  std::vector<trainer_term> terms;
  std::vector<std::string> defaults_used, warnings;
};

/// The trainers, the commit docs/presets.md read each at, and whether its configuration is a
/// command line (else a YAML/JSON mapping).
struct trainer_info {
  std::string_view name, commit;
  bool command_line;
};

inline constexpr trainer_info all_trainers[] = {
    {"verl", "verl-project/verl 1dda039b", false},  {"openrlhf", "OpenRLHF/OpenRLHF 3c3be623", true},
    {"trl", "huggingface/trl f2cd5771", false},     {"nemo-rl", "NVIDIA-NeMo/RL 7ea279ab", false},
    {"slime", "THUDM/slime 624b824a", true},        {"open-instruct", "allenai/open-instruct e6c3044a", true},
    {"roll", "alibaba/ROLL 8eb27cc2", false},       {"easyr1", "hiyouga/EasyR1 b44b311b", false}};

inline const trainer_info& find_trainer(std::string_view name) {
  std::string names;
  for (const auto& t : all_trainers) {
    if (t.name == name) return t;
    names += (names.empty() ? "" : ", ") + std::string(t.name);
  }
  throw trainer_error("unknown trainer '" + std::string(name) + "'; trainers: " + names);
}

// ---- reading keys ---------------------------------------------------------------------

namespace detail {

inline std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// A trainer's keys as its reader consults them: every value read is checked, every default
/// taken is recorded, and the keys that mention "kl" but were never read are reported.
class config_reader {
 public:
  config_reader(const trainer_info& t, const config_map& m, trainer_reading& out)
      : trainer_(t), map_(m), out_(out) {}

  /// The value of key, or fallback (recorded in defaults_used).
  std::string text(const std::string& key, const std::string& fallback) {
    read_.insert(key);
    const auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    out_.defaults_used.push_back(key + "=" + fallback);
    return fallback;
  }

  bool flag(const std::string& key, bool fallback) {
    const std::string v = lower(text(key, fallback ? "true" : "false"));
    if (v == "true" || v == "1") return true;
    if (v == "false" || v == "0") return false;
    fail(key, "is not true or false");
  }

  double number(const std::string& key, double fallback) {
    const std::optional<double> v = optional_number(key, fallback);
    if (!v) fail(key, "must be a number here");
    return *v;
  }

  /// A number, or nullopt for null/None (fallback nullopt: the trainer's default is null).
  std::optional<double> optional_number(const std::string& key, std::optional<double> fallback) {
    const std::string v = text(key, fallback ? format_number(*fallback) : "null");
    if (v == "null" || v == "None" || v == "~" || v.empty()) return std::nullopt;
    const number_reading r = read_number(v, false);
    if (r.problem != number_problem::none) fail(key, "is not a finite number");
    return r.value;
  }

  std::string choice(const std::string& key, const std::string& fallback,
                     std::initializer_list<std::string_view> allowed) {
    const std::string v = text(key, fallback);
    std::string names;
    for (auto a : allowed) {
      if (a == v) return v;
      names += (names.empty() ? "" : ", ") + std::string(a);
    }
    fail(key, "is not one of " + std::string(trainer_.name) + "'s values: " + names);
  }

  /// Two spellings of one key (a rename): the old one is read as the new; both with
  /// different values contradict each other.
  void alias(const std::string& old_key, const std::string& new_key) {
    const auto o = map_.find(old_key);
    if (o == map_.end()) return;
    read_.insert(old_key);
    const auto n = map_.find(new_key);
    if (n != map_.end() && n->second != o->second)
      throw trainer_error(name() + ": " + old_key + "='" + o->second + "' and " + new_key + "='" +
                          n->second + "' are two spellings of one option with different values");
    map_[new_key] = o->second;
    given_as_[new_key] = old_key;
  }

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    const auto it = map_.find(key);
    const auto old = given_as_.find(key);
    throw trainer_error(name() + ": " + key + "='" + (it == map_.end() ? "" : it->second) + "' " +
                        (old == given_as_.end() ? "" : "(given as " + old->second + ") ") + why);
  }

  void warn(const std::string& text) { out_.warnings.push_back(name() + ": " + text); }

  /// The term of role with spec text (the trainer's estimator name under its preset);
  /// beta goes into the spec. A spec klgrad refuses is the key's error.
  void term(const std::string& role, const std::string& key, const std::string& spec_text,
            double beta) {
    if (beta == 0) {
      warn("the " + role + " term (" + key + ") has coefficient 0: it adds nothing, so it is no term");
      return;
    }
    try {
      out_.terms.push_back({role, parse_spec(spec_text + ",beta=" + format_number(beta)), beta});
    } catch (const spec_error& e) {
      fail(key, std::string("gives no klgrad term: ") + e.what());
    }
  }

  /// Keys of the trainer's KL that need no reading here: those of a switched-off term and
  /// those that do not change the term (a controller's horizon and target, Hydra's _target_,
  /// other losses' settings).
  void known(std::initializer_list<std::string> keys) { read_.insert(keys.begin(), keys.end()); }

  /// Warnings for the keys that mention "kl" and were neither read nor known.
  void report_unread() {
    for (const auto& [key, value] : map_)
      if (!read_.count(key) && lower(key).find("kl") != std::string::npos)
        warn(key + "='" + value + "' is not a KL key klgrad reads for " +
             std::string(trainer_.name) + " (docs/explain.md lists them): it is not modelled");
  }

  std::string name() const { return std::string(trainer_.name); }

  /// Why the policy that sampled a batch can be older than the one trained (ppo epochs > 1,
  /// several optimizer steps per rollout): verdict_warnings() warns for the loss terms whose
  /// off-policy verdict then differs.
  void stale(const std::string& why) { stale_ = why; }
  const std::string& stale_reason() const { return stale_; }

 private:
  const trainer_info& trainer_;
  config_map map_;
  trainer_reading& out_;
  std::set<std::string> read_;
  std::map<std::string, std::string> given_as_;  ///< new key -> the old spelling given
  std::string stale_;
};

// ---- the trainers -----------------------------------------------------------------------
// Each reads its keys with its defaults at the commit docs/presets.md cites and adds the
// terms it computes (the loss first), with the warnings docs/presets.md documents. The
// estimator names go to the spec as they are: the spec grammar reads each trainer's names
// under its preset (estimator_aliases).

/// Where a value clamp at +-10 (docs/presets.md) stops estimator name's gradient.
inline std::string clamp_zero_warning(const std::string& name) {
  const std::string where = name == "k1" || name == "kl" ? "|s| > 10"
                            : name == "k2" || name == "mse" ? "|s| > 4.4721"
                                                            : "s outside [-2.6109, 10.99998]";
  return ": the coefficient is 0 where the value clamp +-10 binds (s = lp - lr: " + where +
         "): those tokens get no KL gradient";
}

/// verl and EasyR1 (one code base): KL loss and/or KL in the reward.
inline void read_verl_like(config_reader& r, bool easyr1) {
  const std::string actor = easyr1 ? "algorithm." : "actor_rollout_ref.actor.";
  const std::string preset = easyr1 ? ",preset=easyr1" : ",preset=verl";
  auto estimator = [&](const std::string& key, const std::string& fallback) {
    const std::string name = r.text(key, fallback);
    const std::string base = !easyr1 && name.size() > 1 && name.back() == '+'
                                 ? name.substr(0, name.size() - 1) : name;
    const auto names = easyr1 ? std::vector<std::string>{"kl", "abs", "mse", "low_var_kl", "full"}
                              : std::vector<std::string>{"kl", "k1", "abs", "mse", "k2",
                                                         "low_var_kl", "k3", "full"};
    if (std::find(names.begin(), names.end(), base) == names.end())
      r.fail(key, "is not one of " + r.name() + "'s estimators: " +
                      (easyr1 ? "kl, abs, mse, low_var_kl, full"
                              : "kl/k1, abs, mse/k2, low_var_kl/k3, full, and NAME+"));
    if (name == "full" || name == "full+")
      r.fail(key, "is the full-vocabulary KL, which no per-token spec expresses (and verl's "
                  "kl_penalty_forward raises NotImplementedError for it): use klgrad eval on logits");
    if (name.size() > 1 && name.back() == '+' && name != "k2+" && name != "mse+") {
      r.warn(key + "=" + name + ": every '+' name raises NotImplementedError in verl before PR "
             "#6058 (merged 2026-04; volcengine/verl b178a3cd still raises)");
      r.warn(key + "=" + name + ": its k2 gradient is unclamped; the clamps act on the logged "
             "value only");
    } else if (name == "low_var_kl" || name == "k3") {
      r.warn(key + "=" + name + ": the coefficient is 0 where the clamps bind (s = lp - lr "
             "outside [-2.6109, 10.99998], the value clamp +-10, or |s| > 20): those tokens get "
             "no KL gradient");
    }
    return name;
  };
  if (easyr1)
    r.known({"algorithm.kl_penalty", "algorithm.kl_coef", "algorithm.kl_type",
             "algorithm.kl_horizon", "algorithm.kl_target", "algorithm.use_kl_loss",
             "worker.actor.disable_kl", "worker.actor.use_kl_loss", "worker.actor.kl_penalty",
             "worker.actor.kl_coef"});
  else
    r.known({actor + "kl_loss_type", actor + "kl_loss_coef", "algorithm.kl_penalty",
             "algorithm.kl_ctrl._target_", "algorithm.kl_ctrl.type", "algorithm.kl_ctrl.kl_coef",
             "algorithm.kl_ctrl.horizon", "algorithm.kl_ctrl.target_kl",
             actor + "policy_loss.kl_cov_ratio", actor + "policy_loss.ppo_kl_coef"});
  if (easyr1 && r.flag("algorithm.disable_kl", false)) return;
  const bool loss = r.flag(actor + "use_kl_loss", false);
  if (loss) {
    const std::string key = actor + (easyr1 ? "kl_penalty" : "kl_loss_type");
    const std::string name = estimator(key, easyr1 ? "kl" : "low_var_kl");
    std::string agg;
    if (easyr1) {
      if (r.choice("worker.actor.loss_avg_mode", "token", {"token", "seq"}) == "seq")
        r.warn("worker.actor.loss_avg_mode=seq is a token-count-weighted mixture of sequence "
               "means that no klgrad aggregation expresses (docs/presets.md): the spec keeps the "
               "token mean; the verdicts do not depend on it");
    } else {
      const std::string mode = r.choice(
          actor + "loss_agg_mode", "token-mean",
          {"token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
           "seq-mean-token-sum-norm"});
      agg = ",agg=" + mode;
      if (mode == "seq-mean-token-sum-norm") {
        const auto L = r.optional_number(actor + "loss_scale_factor", std::nullopt);
        if (L) {
          agg += ",agg-norm=" + format_number(*L);
        } else {
          r.warn(actor + "loss_agg_mode=seq-mean-token-sum-norm with loss_scale_factor null "
                 "divides by the padded response width, which the configuration does not give: "
                 "the spec keeps token-mean (add agg=seq-mean-token-sum-norm,agg-norm=WIDTH); "
                 "the verdicts do not depend on it");
          agg.clear();
        }
      }
    }
    r.term("loss", key, name + "-as-loss" + preset + agg,
           r.number(actor + (easyr1 ? "kl_coef" : "kl_loss_coef"), 1e-3));
    const std::string epochs_key = easyr1 ? "worker.actor.ppo_epochs" : actor + "ppo_epochs";
    const double epochs = r.number(epochs_key, 1);
    if (epochs > 1) r.stale(epochs_key + "=" + format_number(epochs));
    // Several optimizer steps per rollout (both sizes in prompts): the later mini-batches
    // are stale. EasyR1's names are verl's data.train_batch_size and ppo_mini_batch_size.
    const std::string batch_key = easyr1 ? "data.rollout_batch_size" : "data.train_batch_size",
                      mini_key = easyr1 ? "worker.actor.global_batch_size"
                                        : actor + "ppo_mini_batch_size";
    const double batch = r.number(batch_key, easyr1 ? 512 : 1024),
                 mini = r.number(mini_key, 256);
    if (epochs <= 1 && mini > 0 && batch > mini)
      r.stale(batch_key + "=" + format_number(batch) + " with " + mini_key + "=" +
              format_number(mini) + " (" + format_number(std::ceil(batch / mini)) +
              " optimizer steps per rollout)");
  }
  const bool reward = easyr1 ? !loss : r.flag("algorithm.use_kl_in_reward", false);
  if (reward) {
    const std::string key = "algorithm.kl_penalty";
    const std::string name = estimator(key, "kl");
    const std::string adv = r.text("algorithm.adv_estimator", easyr1 ? "grpo" : "gae");
    const std::string coef_key = easyr1 ? "algorithm.kl_coef" : "algorithm.kl_ctrl.kl_coef";
    const std::string type_key = easyr1 ? "algorithm.kl_type" : "algorithm.kl_ctrl.type";
    if (r.choice(type_key, "fixed", {"fixed", "adaptive"}) == "adaptive")
      r.warn(type_key + "=adaptive: beta is the controller's initial " + coef_key +
             "; it then moves with the measured KL (docs/trainers.md)");
    std::string level = ",level=sequence";
    if (adv == "gae") {
      level = ",level=to-go";
      if (!easyr1) {  // GAE discounts the penalties that follow by algorithm.gamma
        const double gamma = r.number("algorithm.gamma", 1.0);
        if (gamma != 1.0) level += ",gamma=" + format_number(gamma);
      }
    }
    r.term("reward", key, name + "-in-reward" + preset + level, r.number(coef_key, 1e-3));
  }
}

inline void read_openrlhf(config_reader& r) {
  // The options before OpenRLHF's dotted rename (ed62d0e2, 2026-04-19).
  for (const auto& [old_key, new_key] :
       std::initializer_list<std::pair<const char*, const char*>>{
           {"kl_estimator", "algo.kl.estimator"}, {"use_kl_loss", "algo.kl.use_loss"},
           {"init_kl_coef", "algo.kl.init_coef"}, {"kl_target", "algo.kl.target"},
           {"kl_horizon", "algo.kl.horizon"}, {"max_epochs", "train.max_epochs"},
           {"advantage_estimator", "algo.advantage.estimator"},
           {"rollout_batch_size", "rollout.batch_size"},
           {"n_samples_per_prompt", "rollout.n_samples_per_prompt"},
           {"train_batch_size", "train.batch_size"}, {"gamma", "algo.advantage.gamma"}})
    r.alias(old_key, new_key);
  r.known({"algo.kl.estimator", "algo.kl.use_loss", "algo.kl.target", "algo.kl.horizon"});
  const double beta = r.number("algo.kl.init_coef", 0.01);
  if (beta <= 0) return;  // no reference model, no KL
  const std::string key = "algo.kl.estimator";
  const std::string name = r.choice(key, "k1", {"k1", "k2", "k3"});
  r.warn("--" + key + " " + name + clamp_zero_warning(name));
  if (name == "k3")
    r.warn("--" + key + " k3: in the trainer the gradient is NaN for s < -88.72 (exp overflows "
           "in fp32 under the value clamp); klgrad gives 0 there and counts the token as guarded");
  if (r.optional_number("algo.kl.target", std::nullopt))
    r.warn("--algo.kl.target is set: beta is the adaptive controller's initial --algo.kl.init_coef");
  if (r.flag("algo.kl.use_loss", false)) {
    r.term("loss", key, name + "-as-loss,preset=openrlhf", beta);
    const double epochs = r.number("train.max_epochs", 1);
    const double samples = r.number("rollout.batch_size", 1024) *
                           r.number("rollout.n_samples_per_prompt", 1),
                 batch = r.number("train.batch_size", 128);
    if (epochs > 1) r.stale("--train.max_epochs " + format_number(epochs));
    else if (batch > 0 && samples > batch)
      r.stale("--rollout.batch_size x --rollout.n_samples_per_prompt = " + format_number(samples) +
              " with --train.batch_size " + format_number(batch) + " (" +
              format_number(std::ceil(samples / batch)) + " optimizer steps per rollout)");
  } else {
    // Every estimator sums the token rewards that follow (GAE or cumulative returns); only
    // gae and reinforce discount them by --algo.advantage.gamma (the others force 1).
    const std::string adv =
        r.choice("algo.advantage.estimator", "gae",
                 {"gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo"});
    std::string gamma;
    if (adv == "gae" || adv == "reinforce") {
      const double g = r.number("algo.advantage.gamma", 1.0);
      if (g != 1.0) gamma = ",gamma=" + format_number(g);
    }
    r.term("reward", key, name + "-in-reward,preset=openrlhf,level=to-go" + gamma, beta);
  }
}

inline void read_trl(config_reader& r) {
  r.known({"use_bias_correction_kl"});
  const double beta = r.number("beta", 0.0);
  if (beta == 0) {
    r.warn("beta=0 (TRL's default): no reference model is loaded and there is no KL term");
    return;
  }
  std::string spec = "k3-as-loss,preset=trl";
  const bool corrected = r.flag("use_bias_correction_kl", false);
  const std::string level = r.choice("importance_sampling_level", "token", {"token", "sequence"});
  if (corrected) spec += ",is=differentiable";
  if (corrected && level == "sequence") spec += ",is-level=sequence-mean";
  const std::string loss_type = r.choice(
      "loss_type", "dapo", {"grpo", "sapo", "bnpo", "dr_grpo", "dapo", "cispo", "vespo", "luspo"});
  if (loss_type == "grpo" || loss_type == "sapo") spec += ",agg=seq-mean-token-mean";
  if (loss_type == "dr_grpo")
    spec += ",agg=seq-mean-token-sum-norm,agg-norm=" +
            format_number(r.number("max_completion_length", 512));
  if (loss_type == "luspo")
    r.warn("loss_type=luspo at f2cd5771 averages over padded positions too, which klgrad does "
           "not model (docs/presets.md); the spec keeps the token mean");
  r.warn("k3 is unclamped in TRL: for s = lp - lr < -88.72 its value is inf in fp32 (klgrad "
         "guards s and stays finite)");
  r.term("loss", "beta", spec, beta);
  const double iterations = r.number("num_iterations", 1);
  if (iterations > 1) r.stale("num_iterations=" + format_number(iterations));
}

inline void read_nemo_rl(config_reader& r) {
  const std::string fn = "loss_fn.";
  r.known({fn + "use_on_policy_kl_approximation"});
  const std::string key = fn + "reference_policy_kl_type";
  const std::string name = r.choice(key, "k3", {"k1", "k2", "k3"});
  const double beta = r.number(fn + "reference_policy_kl_penalty", 0.01);
  const auto in = r.optional_number(fn + "kl_input_clamp_value", 20.0);
  const auto out = r.optional_number(fn + "kl_output_clamp_value", 10.0);
  const bool in_reward = r.flag(fn + "use_kl_in_reward", false);
  auto clamp = [&](bool loss) {
    if (in == std::optional<double>(20.0) && out == std::optional<double>(10.0)) return std::string();
    std::string c;
    auto add = [&](const std::string& item) { c += (c.empty() ? "" : "/") + item; };
    if (in) add("log-ratio:" + format_number(-*in) + ":" + format_number(*in));
    if (out) add("value:" + format_number(-*out) + ":" + format_number(*out));
    if (loss && out) add("after-weight");
    if (loss && in) add("detach-weight");
    return ",clamp=" + (c.empty() ? std::string("none") : c);
  };
  const std::string agg =
      r.flag(fn + "token_level_loss", true) ? "" : ",agg=seq-mean-token-mean";
  if (beta <= 0) return;
  if (in || out)
    r.warn(key + "=" + name + ": the coefficient is 0 where the clamps bind (|s| > " +
           (in ? format_number(*in) : std::string("inf")) + ", or |w k| > " +
           (out ? format_number(*out) : std::string("inf")) + "): those tokens get no KL gradient");
  if (!in_reward) {
    if (r.flag(fn + "use_on_policy_kl_approximation", false))
      r.warn(fn + "use_on_policy_kl_approximation=true: the weight is exp(lp - lb) with lb the "
             "generation log-probs; pass them as the behaviour log-probs (without them klgrad "
             "evaluates NeMo-RL's default weight exp(lp - sg lp)); in the trainer the gradient "
             "is NaN where lp - lb > 88.7 (w overflows; klgrad guards log w)");
    r.term("loss", key, name + "-as-loss,preset=nemo-rl" + clamp(true) + agg, beta);
    return;
  }
  // With use_kl_in_reward the loss-side beta is 0; only Reinforce++ applies the penalty.
  const std::string adv = r.choice("grpo.adv_estimator.name", "grpo",
                                   {"grpo", "gdpo", "opd", "reinforce_plus_plus"});
  if (adv != "reinforce_plus_plus") {
    r.warn(fn + "use_kl_in_reward=true with grpo.adv_estimator.name=" + adv +
           ": that advantage estimator does not apply the in-reward KL, so the configuration has "
           "no KL term (docs/presets.md: read, not run)");
    return;
  }
  r.term("reward", key, name + "-in-reward,preset=nemo-rl" + clamp(false) + agg, beta);
}

inline void read_slime(config_reader& r) {
  const std::string key = "kl-loss-type";
  r.known({"use-unbiased-kl", "use-kl-loss"});
  const std::string name = r.choice(key, "k1", {"k1", "k2", "k3", "low_var_kl"});
  const double loss_beta = r.number("kl-loss-coef", 0.0), reward_beta = r.number("kl-coef", 0.0);
  if (loss_beta != 0 && reward_beta != 0)
    throw trainer_error("slime: --kl-coef " + format_number(reward_beta) + " and --kl-loss-coef " +
                        format_number(loss_beta) + ": slime asserts that only one of them is set");
  auto edges = [&] {
    if (name == "k3")
      r.warn("--kl-loss-type k3 is unclamped: for s = lp - lr < -88.72 its value is inf in fp32 "
             "(klgrad guards s and stays finite)");
    if (name == "low_var_kl")
      r.warn("--kl-loss-type low_var_kl" + clamp_zero_warning("k3") +
             "; in the trainer the gradient is NaN for s < -88.72 (klgrad: 0, guarded)");
  };
  if (r.flag("use-kl-loss", false)) {
    if (loss_beta == 0) {
      r.warn("--use-kl-loss with --kl-loss-coef 0: the KL loss adds nothing (0 is slime's default)");
    } else {
      edges();
      const bool unbiased = r.flag("use-unbiased-kl", false);
      const std::string agg = r.flag("calculate-per-token-loss", false) ? ",agg=token-mean" : "";
      r.term("loss", key,
             name + "-as-loss,preset=slime" + (unbiased ? ",is=differentiable" : "") + agg,
             loss_beta);
      const auto steps = r.optional_number("num-steps-per-rollout", std::nullopt);
      if (steps && *steps > 1) r.stale("--num-steps-per-rollout " + format_number(*steps));
    }
  }
  if (reward_beta != 0) {
    const std::string adv = r.choice("advantage-estimator", "grpo",
                                     {"grpo", "gspo", "cispo", "reinforce_plus_plus",
                                      "reinforce_plus_plus_baseline", "ppo"});
    if (adv == "grpo" || adv == "gspo" || adv == "cispo") {
      r.warn("--kl-coef " + format_number(reward_beta) + " with --advantage-estimator " + adv +
             ": that estimator ignores the KL in the reward, so it is no term");
    } else {
      edges();
      r.term("reward", key,
             name + "-in-reward,preset=slime" +
                 (adv == "reinforce_plus_plus_baseline" ? "" : ",level=to-go"),
             reward_beta);
    }
  }
}

inline void read_open_instruct(config_reader& r) {
  const double beta = r.number("beta", 0.05);
  const bool ref = r.flag("load_ref_policy", true);
  if (beta != 0 && !ref)
    r.fail("load_ref_policy", "with --beta " + format_number(beta) +
                                  ": open-instruct refuses a KL coefficient without a reference "
                                  "policy (set --beta 0.0)");
  r.known({"kl_estimator"});
  if (beta == 0) return;
  const std::string key = "kl_estimator";
  const std::string index = r.choice(key, "2", {"0", "1", "2", "3"});
  r.warn("--kl_estimator " + index + ": the coefficient is 0 for |s| > 40 (the log-ratio "
         "clamp), except estimator 3's weight gradient");
  if (index != "3")
    r.warn("--kl_estimator " + index + ": in the trainer the gradient is NaN when its PPO ratio "
           "exp(lp - lold) overflows (fp32, lp - lold > 88.7; docs/presets.md); klgrad stays finite");
  const std::string denominator = r.text("loss_denominator", "token");
  std::string agg;
  if (denominator != "token") {
    const number_reading d = read_number(denominator, false);
    if (d.problem != number_problem::none || !(d.value > 0))
      r.fail("loss_denominator", "must be \"token\" or a number > 0 (open-instruct refuses it)");
    agg = ",agg=token-sum-norm,agg-norm=" + denominator;
  }
  r.term("loss", key, index + "-as-loss,preset=open-instruct" + agg, beta);
  const double epochs = r.number("num_epochs", 1), minibatches = r.number("num_mini_batches", 1);
  if (epochs > 1) r.stale("--num_epochs " + format_number(epochs));
  else if (minibatches > 1) r.stale("--num_mini_batches " + format_number(minibatches));
}

inline void read_roll(config_reader& r) {
  r.known({"kl_loss_coef", "kl_penalty", "init_kl_coef", "target_kl", "kl_horizon"});
  if (r.flag("use_kl_loss", false)) {
    const double beta = r.number("kl_loss_coef", 0.0);
    if (beta == 0) {
      r.warn("use_kl_loss=true with kl_loss_coef=0: the KL loss adds nothing (0 is ROLL's default)");
    } else {
      const std::string mode = r.choice(
          "loss_agg_mode", "seq-mean-token-mean",
          {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"});
      std::string agg = ",agg=" + mode;
      if (mode == "seq-mean-token-sum-norm") {
        r.warn("loss_agg_mode=seq-mean-token-sum-norm divides by the padded width L only "
               "(klgrad's token-sum-norm), which the configuration does not give: the spec keeps "
               "seq-mean-token-mean (add agg=token-sum-norm,agg-norm=L)");
        agg.clear();
      }
      r.warn("the KL loss is hard-coded k3" + clamp_zero_warning("k3") +
             "; in the trainer the gradient is NaN for s < -88.72 (klgrad: 0, guarded)");
      r.term("loss", "use_kl_loss", "k3-as-loss,preset=roll" + agg, beta);
      const double epochs = r.number("ppo_epochs", 1);
      if (epochs > 1) r.stale("ppo_epochs=" + format_number(epochs));
    }
  }
  if (r.flag("add_token_level_kl", false)) {
    const std::string key = "kl_penalty";
    const std::string name = r.choice(key, "kl", {"kl", "abs", "mse", "k3", "full"});
    if (name == "full")
      r.fail(key, "is the full-vocabulary KL, which no per-token spec expresses (read, not run, "
                  "in docs/presets.md)");
    if (r.optional_number("target_kl", std::nullopt))
      r.warn("target_kl is set: beta is the adaptive controller's initial init_kl_coef");
    if (name == "k3")
      r.warn("kl_penalty=k3" + clamp_zero_warning("k3"));
    // Every ROLL advantage estimator (gae, reinforce, grpo, ...) sums the token rewards that
    // follow, discounted by gamma (roll/utils/functionals.py compute_advantage).
    const double gamma = r.number("gamma", 1.0);
    r.term("reward", key,
           name + "-in-reward,preset=roll,level=to-go" +
               (gamma != 1.0 ? ",gamma=" + format_number(gamma) : std::string()),
           r.number("init_kl_coef", 0.2));
  }
}

/// Warnings from each term's verdict (klgrad::explain): what it follows on-policy over
/// sequences when that is not the sequence's reverse KL, and from a stale policy.
inline void verdict_warnings(config_reader& r, const trainer_reading& out) {
  for (const trainer_term& t : out.terms) {
    const verdict v = explain(t.spec);
    const follows& on = v.on_policy_sequence;
    const std::string who = "the " + t.role + " term " + to_string(t.spec) + " ";
    if (on.kind == follows::zero)
      r.warn(who + "has zero expected gradient on-policy: " + on.sentence);
    else if (on.kind == follows::biased)
      r.warn(who + "follows no KL in expectation on-policy: " + on.sentence);
    else if (on.name.find("fkl") != std::string::npos)
      r.warn(who + "follows " + on.name + " on-policy over sequences, the forward KL: " + on.sentence);
    else if (on.name == "rkl_token")
      r.warn(who + "follows only the per-token KL (rkl_token) over sequences, not the sequence "
                   "KL(pi||ref): " + on.sentence);
    else if (on.name != "rkl")
      r.warn(who + "follows " + on.name + " over sequences, not rkl: " + on.sentence);
    const follows& off = v.off_policy_sequence;
    if (!r.stale_reason().empty() && t.role == "loss" && off.name != on.name)
      r.warn(r.stale_reason() + ": the batches after the first sample from a stale policy mu, "
             "where the " + t.role + " term follows " + off.name + " instead of " + on.name +
             " (" + off.sentence + ")");
  }
}

}  // namespace detail

/// The terms, defaults and warnings of trainer `name` configured by `keys` (then `sets`).
/// `notes`: the warnings of the front end that read the keys (read_command_line).
inline trainer_reading read_trainer_config(std::string_view name, config_map keys,
                                           const std::vector<std::string>& sets = {},
                                           std::vector<std::string> notes = {}) {
  const trainer_info& info = find_trainer(name);
  apply_overrides(keys, sets);
  trainer_reading out;
  for (auto& n : notes) out.warnings.push_back(std::string(info.name) + ": " + n);
  out.trainer = std::string(info.name);
  out.commit = std::string(info.commit);
  detail::config_reader r(info, keys, out);
  if (name == "verl" || name == "easyr1") detail::read_verl_like(r, name == "easyr1");
  if (name == "openrlhf") detail::read_openrlhf(r);
  if (name == "trl") detail::read_trl(r);
  if (name == "nemo-rl") detail::read_nemo_rl(r);
  if (name == "slime") detail::read_slime(r);
  if (name == "open-instruct") detail::read_open_instruct(r);
  if (name == "roll") detail::read_roll(r);
  if (out.terms.empty()) r.warn("the configuration has no KL term");
  detail::verdict_warnings(r, out);
  r.report_unread();
  return out;
}

/// The JSON `klgrad explain --trainer` prints and klgrad.from_trainer_config returns.
inline nlohmann::ordered_json to_json(const trainer_reading& t) {
  nlohmann::ordered_json out;
  out["trainer"] = t.trainer;
  out["read_at"] = t.commit;
  out["terms"] = nlohmann::ordered_json::array();
  for (const auto& term : t.terms)
    out["terms"].push_back({{"role", term.role},
                            {"spec", to_string(term.spec)},
                            {"beta", term.beta},
                            {"verdict", to_json(explain(term.spec))}});
  out["defaults_used"] = t.defaults_used;
  out["warnings"] = t.warnings;
  return out;
}

}  // namespace klgrad::frontend
