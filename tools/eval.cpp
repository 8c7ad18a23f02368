// klgrad eval: a batch in JSON, a spec, and the per-token values and coefficients out; or a
// batch of full policy and reference logits, and the exact per-state divergences and their
// gradients out (docs/logits.md).
#include "commands.hpp"

#include <klgrad/klgrad.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace klgrad::cli {
namespace {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using column = Eigen::Array<T, Eigen::Dynamic, 1>;
using shape = std::vector<Index>;

// ---- reading JSON ----------------------------------------------------------------------

/// A JSON value for a message, cut short.
std::string shown(const nlohmann::json& x) {
  const std::string text = x.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

std::string entries(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " entry" : " entries");
}

/// A number, or null for NaN (JSON has no NaN; masked slots may hold one).
template <class T>
T number(const nlohmann::json& x, const std::string& where) {
  if (x.is_null()) return std::numeric_limits<T>::quiet_NaN();
  if (!x.is_number()) throw usage_error(where + " must be a number or null, got " + shown(x));
  return x.get<T>();
}

/// A logit: a number, the string "-inf" (an entry of a masked vocabulary, probability 0) or
/// null (NaN, for masked rows). "inf" is refused here: +inf is no logit.
template <class T>
T logit(const nlohmann::json& x, const std::string& where) {
  if (x.is_string()) {
    if (x.get<std::string>() == "-inf") return -std::numeric_limits<T>::infinity();
    throw usage_error(where + " is " + shown(x) +
                      "; a logit is a finite number, \"-inf\" (an entry of a masked "
                      "vocabulary) or null (NaN, in masked rows only)");
  }
  if (!x.is_null() && !x.is_number())
    throw usage_error(where + " must be a number, \"-inf\" or null, got " + shown(x));
  return number<T>(x, where);
}

/// An integer (a token id, an offset).
std::int64_t integer(const nlohmann::json& x, const std::string& where) {
  if (!x.is_number_integer()) throw usage_error(where + " must be an integer, got " + shown(x));
  return x.get<std::int64_t>();
}

/// Entries of a rectangular nested list, row-major, and the list's shape.
template <class S>
struct tensor {
  shape dims;
  std::vector<S> data;
};

/// Reads a rectangular nested list of dims.size() levels, each entry by entry(x, where).
/// Wrong lengths are reported against `like` (another field of this shape, at the same
/// index) or, when like is empty, against the list's own first entries (name[0]...).
template <class S, class Entry>
struct tensor_reader {
  const std::string& name;
  const std::string& like;
  const shape& dims;
  Entry entry;
  std::vector<S>& out;

  void operator()(const nlohmann::json& x, std::size_t level, const std::string& at) const {
    if (level == dims.size()) {
      out.push_back(entry(x, name + at));
      return;
    }
    const std::size_t n = std::size_t(dims[level]);
    std::string from = like + at;
    if (like.empty()) {
      from = name;
      for (std::size_t l = 0; l < level; ++l) from += "[0]";
    }
    if (!x.is_array())
      throw usage_error(name + at + " must be a list of " + entries(n) + " (as " + from +
                        "), got " + shown(x));
    if (x.size() != n)
      throw usage_error(name + at + " has " + entries(x.size()) + " but " + from + " has " +
                        std::to_string(n));
    for (std::size_t i = 0; i < n; ++i) (*this)(x[i], level + 1, at + "[" + std::to_string(i) + "]");
  }
};

/// The shape of x, a nested list of `depth` levels (`layout` describes it for messages), from
/// its first entries; below an empty list the lengths are 0.
shape probe_shape(const nlohmann::json& x, const std::string& name, std::size_t depth,
                  const char* layout) {
  shape dims;
  const nlohmann::json* p = &x;
  while (dims.size() < depth) {
    if (!p->is_array()) {
      std::string at = name;
      for (std::size_t l = 0; l < dims.size(); ++l) at += "[0]";
      throw usage_error(at + " must be a list (" + name + ": " + layout + "), got " + shown(*p));
    }
    dims.push_back(Index(p->size()));
    if (p->empty()) dims.resize(depth, 0);
    else p = &(*p)[0];
  }
  return dims;
}

/// x read as a nested list of shape dims (see tensor_reader); errors name the field, the
/// index and the value.
template <class S, class Entry>
tensor<S> read_tensor(const nlohmann::json& x, const std::string& name, const shape& dims,
                      Entry entry, const std::string& like = "") {
  tensor<S> t;
  t.dims = dims;
  std::size_t n = 1;
  for (const Index d : dims) n *= std::size_t(d);
  t.data.reserve(n);
  tensor_reader<S, Entry>{name, like, t.dims, entry, t.data}(x, 0, "");
  return t;
}

/// A B x T array from a list of equal-length rows (a padded batch of log-probabilities).
template <class T>
rows<T> matrix(const nlohmann::json& x, const char* name) {
  const shape dims =
      probe_shape(x, name, 2, "a list of rows (padded batch); 1-D lists need \"offsets\"");
  const auto t = read_tensor<T>(x, name, dims, number<T>);
  return Eigen::Map<const rows<T>>(t.data.data(), dims[0], dims[1]);
}

/// A 1-D array (a packed batch).
template <class T, class Entry>
column<T> vector(const nlohmann::json& x, const char* name, Entry entry) {
  const auto t = read_tensor<T>(x, name, probe_shape(x, name, 1, "a 1-D list (packed batch)"), entry);
  return Eigen::Map<const column<T>>(t.data.data(), t.dims[0]);
}

// ---- writing JSON ----------------------------------------------------------------------

/// A number for the output: NaN as null, +-inf as "inf" / "-inf", as in the input.
nlohmann::json number_json(double v) {
  if (std::isnan(v)) return nullptr;
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

/// Row-major entries of the given shape as nested lists.
template <class S>
nlohmann::json to_json(const S* data, const shape& dims, std::size_t level = 0) {
  if (level == dims.size()) {
    if constexpr (std::is_integral_v<S>) return nlohmann::json(std::int64_t(*data));
    else return number_json(double(*data));
  }
  Index stride = 1;
  for (std::size_t l = level + 1; l < dims.size(); ++l) stride *= dims[l];
  nlohmann::json out = nlohmann::json::array();
  for (Index i = 0; i < dims[level]; ++i) out.push_back(to_json(data + i * stride, dims, level + 1));
  return out;
}

// ---- sampled log-probabilities ---------------------------------------------------------

nlohmann::json summary_json(const spec& s, const summary& r) {
  return {{"spec", to_string(s)},
          {"loss", number_json(r.loss)},
          {"kl", number_json(r.kl)},
          {"kl_sequence", number_json(r.kl_sequence)},
          {"tokens", r.tokens},
          {"sequences", r.sequences},
          {"guarded", r.guarded},
          {"dropped", r.dropped}};
}

template <class T>
nlohmann::json evaluate_json(const spec& s, const nlohmann::json& in, const options& opt) {
  for (const char* key : {"logp", "ref"})
    if (!in.contains(key)) throw usage_error(std::string("input has no '") + key + "'");
  const bool has_behavior = in.contains("behavior"), has_mask = in.contains("mask");
  nlohmann::json out;
  if (in.contains("offsets")) {
    const auto lp = vector<T>(in["logp"], "logp", number<T>);
    const auto lr = vector<T>(in["ref"], "ref", number<T>);
    const auto offsets = vector<Index>(in["offsets"], "offsets", integer);
    column<T> value(lp.size()), coef(lp.size());
    const auto mask = has_mask ? vector<T>(in["mask"], "mask", number<T>) : column<T>();
    const auto lb = has_behavior ? vector<T>(in["behavior"], "behavior", number<T>) : column<T>();
    auto run = [&](auto batch) {
      return has_behavior ? evaluate(s, batch.with_behavior(lb), value, coef, opt)
                          : evaluate(s, batch, value, coef, opt);
    };
    const summary r = has_mask ? run(packed(lp, lr, offsets, mask)) : run(packed(lp, lr, offsets));
    out = summary_json(s, r);
    out["value"] = to_json(value.data(), {value.size()});
    out["coef"] = to_json(coef.data(), {coef.size()});
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
    out["value"] = to_json(value.data(), {value.rows(), value.cols()});
    out["coef"] = to_json(coef.data(), {coef.rows(), coef.cols()});
  }
  return out;
}

// ---- full logits -----------------------------------------------------------------------

constexpr const char* logits_keys[] = {"logits",      "ref_logits", "mask",   "ids",
                                       "coef",        "divergence", "lambda", "top_k",
                                       "temperature", "log_probs",  "gradient"};

/// The aggregation and beta of logits input: --spec holds only agg= and its constants
/// (agg-norm=, agg-eps=, agg-seq-eps=, agg-scale=) and beta= (e.g. agg=token-sum,beta=0.04);
/// an estimator term means nothing for exact divergences.
/// parse_spec reads the keys behind a stand-in term, so the grammar has one parser.
spec logits_spec(const std::string& text) {
  const std::string stand_in = "k1-in-reward";
  if (text.empty()) return parse_spec(stand_in);
  constexpr std::string_view keys[] = {"agg",         "agg-norm",  "agg-eps",
                                       "agg-seq-eps", "agg-scale", "beta"};
  for (const std::string_view part : detail::split(text, ',')) {
    const std::string_view key = part.substr(0, part.find('='));
    if (key == part || std::find(std::begin(keys), std::end(keys), key) == std::end(keys))
      throw usage_error("logits input: --spec takes only agg=, agg-norm=, agg-eps=, "
                        "agg-seq-eps=, agg-scale= and beta= (e.g. "
                        "--spec agg=token-sum,beta=0.04), not '" + std::string(part) +
                        "'; the rest of a spec applies to sampled log-probabilities "
                        "(logp, ref)");
  }
  const std::string whole = stand_in + "," + text, quoted = "spec '" + whole + "'";
  try {
    return parse_spec(whole);
  } catch (const spec_error& e) {
    std::string message = e.what();
    if (message.compare(0, quoted.size(), quoted) == 0)
      message = "spec '" + text + "'" + message.substr(quoted.size());
    throw usage_error(message);
  }
}

/// Runs f, naming the arrays of the library's input errors (z, z_ref) by their JSON fields.
template <class F>
auto with_field_names(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const input_error& e) {
    std::string message = e.what();
    if (message.compare(0, 6, "z_ref ") == 0) message = "ref_logits " + message.substr(6);
    else if (message.compare(0, 2, "z ") == 0) message = "logits " + message.substr(2);
    throw usage_error(message);
  }
}

/// Runs f, naming the global counts of the library's errors (batch_counts.tokens, .sequences)
/// by the options that set them.
template <class F>
auto with_count_options(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::runtime_error& e) {  // input_error, or usage_error from with_field_names
    const std::string message = e.what();
    for (const std::string_view field : {"tokens = ", "sequences = "}) {
      const std::string name = "batch_counts." + std::string(field);
      if (message.compare(0, name.size(), name) == 0)
        throw usage_error("--" + std::string(field.substr(0, field.find(' '))) + " " +
                          message.substr(name.size()));
    }
    throw;
  }
}

double real_setting(const nlohmann::json& in, const char* key, double fallback) {
  if (!in.contains(key)) return fallback;
  if (!in[key].is_number())
    throw usage_error(std::string(key) + " must be a number, got " + shown(in[key]));
  return in[key].get<double>();
}

bool flag_setting(const nlohmann::json& in, const char* key, bool fallback) {
  if (!in.contains(key)) return fallback;
  if (!in[key].is_boolean())
    throw usage_error(std::string(key) + " must be true or false, got " + shown(in[key]));
  return in[key].get<bool>();
}

/// Logits input (see docs/logits.md): "logits" and "ref_logits" as B x T x V (padded) or
/// N x V (the rows of one sequence), optional "mask" (B x T or N), "divergence", its
/// settings, and optional "ids" (+ "coef") for the sampled-token paths.
template <class T>
nlohmann::json evaluate_logits_json(const nlohmann::json& in, logits_options opt) {
  for (const auto& item : in.items())
    if (std::find_if(std::begin(logits_keys), std::end(logits_keys), [&](const char* known) {
          return item.key() == known;
        }) == std::end(logits_keys)) {
      std::string keys;
      for (const char* known : logits_keys) keys += std::string(keys.empty() ? "" : ", ") + known;
      throw usage_error("logits input has an unknown key '" + item.key() + "'; keys: " + keys);
    }
  if (!in.contains("ref_logits"))
    throw usage_error("logits input has no 'ref_logits' (the reference's logits, shaped as "
                      "'logits')");

  const nlohmann::json& zj = in["logits"];
  const bool padded_rows = zj.is_array() && !zj.empty() && zj[0].is_array() &&
                           !zj[0].empty() && zj[0][0].is_array();
  const std::size_t depth = padded_rows ? 3 : 2;
  const char* layout = "B x T x V (padded) or N x V lists of logits";
  const auto z = read_tensor<T>(zj, "logits", probe_shape(zj, "logits", depth, layout), logit<T>);
  const auto zr = read_tensor<T>(in["ref_logits"], "ref_logits", z.dims, logit<T>, "logits");
  const shape per_row(z.dims.begin(), z.dims.end() - 1);  // B x T, or N
  const Index V = z.dims.back(), B = padded_rows ? z.dims[0] : 1,
              P = padded_rows ? z.dims[1] : z.dims[0], N = B * P;
  const bool has_mask = in.contains("mask");
  const auto mask =
      has_mask ? read_tensor<T>(in["mask"], "mask", per_row, number<T>, "logits") : tensor<T>{};
  using view = Eigen::Map<const rows<T>>;
  const view zm(z.data.data(), N, V), zrm(zr.data.data(), N, V);
  const view mm(mask.data.data(), has_mask ? B : 0, has_mask ? P : 0);
  const auto batch = has_mask ? logit_rows(zm, zrm, mm) : logit_rows(zm, zrm, padded_rows ? P : 0);

  std::string name = "reverse-kl";
  if (in.contains("divergence")) {
    if (!in["divergence"].is_string())
      throw usage_error("divergence must be a string, got " + shown(in["divergence"]));
    name = in["divergence"].get<std::string>();
  }
  constexpr divergence exact[] = {divergence::reverse_kl, divergence::forward_kl,
                                  divergence::jensen_shannon};
  const bool top_k = name == "forward-kl-top-k";
  const auto found = std::find_if(std::begin(exact), std::end(exact),
                                  [&](divergence d) { return to_string(d) == name; });
  if (!top_k && found == std::end(exact))
    throw usage_error("divergence '" + name + "' is unknown; divergences: reverse-kl, "
                      "forward-kl, jensen-shannon, forward-kl-top-k");
  const divergence d = top_k ? divergence::forward_kl : *found;
  if (in.contains("lambda")) {
    if (top_k || d != divergence::jensen_shannon)
      throw usage_error("lambda is the mixing weight of jensen-shannon; divergence '" + name +
                        "' takes none");
    opt.lambda = real_setting(in, "lambda", opt.lambda);
  }
  Index k = 0;
  if (in.contains("top_k") != top_k)
    throw usage_error(top_k ? "divergence 'forward-kl-top-k' needs top_k, the number of the "
                              "reference's largest logits it keeps"
                            : "top_k applies only to divergence 'forward-kl-top-k', not '" +
                                  name + "'");
  if (top_k) {
    const nlohmann::json& kj = in["top_k"];
    if (!kj.is_number_integer() || kj.get<std::int64_t>() < 1 || kj.get<std::int64_t>() > V)
      throw usage_error("top_k must be an integer in [1, V] = [1, " + std::to_string(V) +
                        "], got " + shown(kj));
    k = Index(kj.get<std::int64_t>());
  }
  opt.temperature = real_setting(in, "temperature", opt.temperature);
  opt.log_probs = flag_setting(in, "log_probs", opt.log_probs);
  const bool gradient = flag_setting(in, "gradient", true);
  const bool has_ids = in.contains("ids"), has_coef = in.contains("coef");
  if (has_coef && !has_ids)
    throw usage_error("coef needs ids: the sampled token of each row it back-propagates through");
  const auto ids = has_ids ? read_tensor<std::int64_t>(in["ids"], "ids", per_row, integer, "logits")
                           : tensor<std::int64_t>{};
  const auto coef =
      has_coef ? read_tensor<T>(in["coef"], "coef", per_row, number<T>, "logits") : tensor<T>{};

  column<T> value(N);
  rows<T> grad(gradient ? N : 0, V);
  nlohmann::json out;
  logits_summary r;
  if (top_k) {
    rows<std::int64_t> indices(N, k);
    r = with_field_names([&] {
      return gradient ? forward_kl_top_k(batch, indices, value, grad, opt)
                      : forward_kl_top_k(batch, indices, value, opt);
    });
    shape dims = per_row;
    dims.push_back(k);
    out["indices"] = to_json(indices.data(), dims);
  } else {
    r = with_field_names([&] {
      return gradient ? logits_divergence(d, batch, value, grad, opt)
                      : logits_divergence(d, batch, value, opt);
    });
  }
  out["divergence"] = name;
  out["value"] = to_json(value.data(), per_row);
  if (gradient) out["grad"] = to_json(grad.data(), z.dims);
  out["loss"] = number_json(r.loss);
  out["mean"] = number_json(r.mean);
  out["rows"] = r.rows;
  out["sequences"] = r.sequences;

  if (has_ids) {
    const Eigen::Map<const column<std::int64_t>> idm(ids.data.data(), N);
    column<T> logp(N);
    with_field_names([&] {
      if (has_mask) selective_log_softmax(zm, idm, logp, mm, opt.temperature);
      else selective_log_softmax(zm, idm, logp, opt.temperature);
    });
    out["logp"] = to_json(logp.data(), per_row);
    if (has_coef) {
      const Eigen::Map<const column<T>> cm(coef.data.data(), N);
      rows<T> logits_grad(N, V);
      with_field_names([&] {
        if (has_mask) sampled_logits_gradient(zm, idm, cm, logits_grad, mm, opt.temperature);
        else sampled_logits_gradient(zm, idm, cm, logits_grad, opt.temperature);
      });
      out["logits_grad"] = to_json(logits_grad.data(), z.dims);
    }
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
      "sequences, guarded, dropped. With a \"logits\" key the input is full logits instead "
      "(docs/logits.md): {\"logits\", \"ref_logits\"} as B x T x V or N x V lists, optional "
      "\"mask\", \"divergence\" (reverse-kl, forward-kl, jensen-shannon, forward-kl-top-k), "
      "\"lambda\", \"top_k\", \"temperature\", \"log_probs\", \"gradient\", \"ids\", \"coef\"; "
      "\"-inf\" stands for a masked vocabulary entry. Prints divergence, value, grad, loss, "
      "mean, rows, sequences (+ indices, logp, logits_grad).");
  cmd->add_option("--spec", cfg->spec,
                  "KL spec, e.g. k3-as-loss,is=detached,beta=0.04 (required for logp/ref input); "
                  "for logits input only agg=, agg-norm=, beta=, e.g. agg=token-sum,beta=0.04");
  cmd->add_option("input", cfg->input, "JSON batch file (stdin when absent or -)");
  cmd->add_option("--type", cfg->type, "precision of the computation")
      ->check(CLI::IsMember({"float", "double"}));
  cmd->add_option("--nonfinite", cfg->nonfinite,
                  "non-finite unmasked log-probabilities: raise or propagate (logits input "
                  "always raises)")
      ->check(CLI::IsMember({"raise", "propagate"}));
  cmd->add_option("--tokens", cfg->tokens, "global N_tokens (data-parallel shard)");
  cmd->add_option("--sequences", cfg->sequences, "global B_nonempty (data-parallel shard)");
  cmd->callback([cfg] {
    const nlohmann::json in = read_json(cfg->input);
    if (!in.is_object()) throw usage_error("the input must hold a JSON object, got " + shown(in));
    nlohmann::json out;
    if (in.contains("logits")) {
      if (cfg->nonfinite != "raise")
        throw usage_error("--nonfinite propagate applies to logp/ref input; logits input "
                          "always raises on a NaN or +inf entry in a valid row");
      const spec s = logits_spec(cfg->spec);
      logits_options opt;
      opt.aggregation = s.aggregation;
      opt.aggregation_constants = s.aggregation_constants;
      opt.beta = s.beta;
      opt.counts.tokens = cfg->tokens;
      opt.counts.sequences = cfg->sequences;
      out = with_count_options([&] {
        return cfg->type == "float" ? evaluate_logits_json<float>(in, opt)
                                    : evaluate_logits_json<double>(in, opt);
      });
    } else {
      if (cfg->spec.empty())
        throw usage_error("--spec is required for logp/ref input, e.g. --spec k3-as-loss");
      const spec s = parse_spec(cfg->spec);
      options opt;
      opt.counts.tokens = cfg->tokens;
      opt.counts.sequences = cfg->sequences;
      opt.nonfinite =
          cfg->nonfinite == "raise" ? nonfinite_policy::raise : nonfinite_policy::propagate;
      out = with_count_options([&] {
        return cfg->type == "float" ? evaluate_json<float>(s, in, opt)
                                    : evaluate_json<double>(s, in, opt);
      });
    }
    std::cout << out.dump() << "\n";
  });
}

}  // namespace klgrad::cli
