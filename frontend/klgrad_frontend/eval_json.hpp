// Reading a klgrad eval input (sampled log-probabilities, or full logits) from JSON and
// evaluating it: the code behind `klgrad eval`, shared with its fuzz targets.
#pragma once

#include "errors.hpp"
#include "json_input.hpp"

#include <klgrad/klgrad.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace klgrad::frontend {
namespace eval_input {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using column = Eigen::Array<T, Eigen::Dynamic, 1>;
using shape = std::vector<Index>;

// ---- reading JSON ----------------------------------------------------------------------

inline std::string entries(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " entry" : " entries");
}

/// A JSON number as T. parse_json keeps numbers in the double range; beyond float's range a
/// number reads as +-inf (a masked slot is never read; a valid one is refused as not finite).
template <class T>
T in_range(const nlohmann::json& x) {
  const double v = x.get<double>();
  if (std::abs(v) > double(std::numeric_limits<T>::max()))
    return std::copysign(std::numeric_limits<T>::infinity(), T(v > 0 ? 1 : -1));
  return T(v);
}

/// A number, or null for NaN (JSON has no NaN; masked slots may hold one).
template <class T>
T number(const nlohmann::json& x, const std::string& where) {
  if (x.is_null()) return std::numeric_limits<T>::quiet_NaN();
  if (!x.is_number()) throw schema_error(where + " must be a number or null, got " + shown(x));
  return in_range<T>(x);
}

/// A mask entry: a number (0 = masked, anything else valid) or a boolean (true = 1, false =
/// 0, as tensor.tolist() gives). null is refused: NaN is nonzero, so it would count as valid.
template <class T>
T mask_entry(const nlohmann::json& x, const std::string& where) {
  if (x.is_boolean()) return x.get<bool>() ? T(1) : T(0);
  if (!x.is_number())
    throw schema_error(where + " is " + shown(x) +
                       "; a mask entry is 1 or true (valid), 0 or false (masked)");
  return in_range<T>(x);
}

/// A logit: a number, the string "-inf" (an entry of a masked vocabulary, probability 0) or
/// null (NaN, for masked rows). "inf" is refused here: +inf is no logit.
template <class T>
T logit(const nlohmann::json& x, const std::string& where) {
  if (x.is_string()) {
    if (x.get<std::string>() == "-inf") return -std::numeric_limits<T>::infinity();
    throw schema_error(where + " is " + shown(x) +
                       "; a logit is a finite number, \"-inf\" (an entry of a masked "
                       "vocabulary) or null (NaN, in masked rows only)");
  }
  if (!x.is_null() && !x.is_number())
    throw schema_error(where + " must be a number, \"-inf\" or null, got " + shown(x));
  return number<T>(x, where);
}

/// A logit stored as S: for the 16-bit formats (--type bf16 / fp16) read as a float and
/// rounded to S (to nearest, ties to even), as a trainer holding bf16 logits has them;
/// beyond S's range a logit becomes +-inf, as beyond float's for --type float.
template <class S>
S stored_logit(const nlohmann::json& x, const std::string& where) {
  if constexpr (klgrad::detail::is_16bit_v<S>) return S(logit<float>(x, where));
  else return logit<S>(x, where);
}

/// An integer (a token id, an offset).
inline std::int64_t integer(const nlohmann::json& x, const std::string& where) {
  if (!x.is_number_integer()) throw schema_error(where + " must be an integer, got " + shown(x));
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
      throw schema_error(name + at + " must be a list of " + entries(n) + " (as " + from +
                         "), got " + shown(x));
    if (x.size() != n)
      throw schema_error(name + at + " has " + entries(x.size()) + " but " + from + " has " +
                         std::to_string(n));
    for (std::size_t i = 0; i < n; ++i) (*this)(x[i], level + 1, at + "[" + std::to_string(i) + "]");
  }
};

/// The shape of x, a nested list of `depth` levels (`layout` describes it for messages), from
/// its first entries; below an empty list the lengths are 0.
inline shape probe_shape(const nlohmann::json& x, const std::string& name, std::size_t depth,
                  const char* layout) {
  shape dims;
  const nlohmann::json* p = &x;
  while (dims.size() < depth) {
    if (!p->is_array()) {
      std::string at = name;
      for (std::size_t l = 0; l < dims.size(); ++l) at += "[0]";
      throw schema_error(at + " must be a list (" + name + ": " + layout + "), got " + shown(*p));
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
  // No reserve for the product of dims: they come from the first entries only, and a list
  // whose first row is long and the rest short would claim more memory than it holds. The
  // reader checks every length before it reads the entries below it.
  tensor_reader<S, Entry>{name, like, t.dims, entry, t.data}(x, 0, "");
  return t;
}

/// A B x T array from a list of equal-length rows (a padded batch of log-probabilities).
template <class T, class Entry>
rows<T> matrix(const nlohmann::json& x, const char* name, Entry entry) {
  const shape dims =
      probe_shape(x, name, 2, "a list of rows (padded batch); 1-D lists need \"offsets\"");
  const auto t = read_tensor<T>(x, name, dims, entry);
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
inline nlohmann::json number_json(double v) {
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

inline nlohmann::json summary_json(const spec& s, const summary& r) {
  return {{"spec", to_string(s)},
          {"loss", number_json(r.loss)},
          {"kl", number_json(r.kl)},
          {"kl_sequence", number_json(r.kl_sequence)},
          {"tokens", r.tokens},
          {"sequences", r.sequences},
          {"guarded", r.guarded},
          {"dropped", r.dropped}};
}

// ---- the library's errors in the CLI's words --------------------------------------------

/// The JSON field holding a C++ argument (z is "logits", counts.tokens is --tokens, ...).
inline std::string json_field(const std::string& argument) {
  if (argument == "z") return "logits";
  if (argument == "z_ref") return "ref_logits";
  if (argument == "counts.tokens") return "--tokens";
  if (argument == "counts.sequences") return "--sequences";
  return argument;
}

/// The JSON index of an error's row: [b][t] in a padded layout of `positions` per
/// sequence, [i] in a 1-D one (positions 0).
inline std::string json_row(const input_error& e, Index positions) {
  auto at = [](std::ptrdiff_t i) { return "[" + std::to_string(i) + "]"; };
  if (e.flat < 0) return "";
  return positions > 0 ? at(e.flat / positions) + at(e.flat % positions) : at(e.flat);
}

/// A number as the JSON input spells it: null for NaN, "inf" / "-inf".
inline std::string json_number(double v) {
  if (std::isnan(v)) return "null (NaN)";
  if (std::isinf(v)) return v > 0 ? "\"inf\"" : "\"-inf\"";
  return klgrad::detail::format_number(v);
}

/// The library's input_error phrased with JSON keys and command-line options, from its
/// fields (positions as in json_row; s the spec of logp/ref input, else null). Reasons it
/// has no words for keep what() (their messages name no C++ call).
inline batch_error in_cli_words(const input_error& e, Index positions, const spec* s) {
  const auto refused = [&e](const std::string& what) { return batch_error(what, e.reason); };
  const std::string row = json_row(e, positions);
  const std::string at = json_field(e.argument) + row +
                         (e.column >= 0 ? "[" + std::to_string(e.column) + "]" : "");
  switch (e.reason) {
    case input_reason::nonfinite:
      if (e.column >= 0)
        return refused(at + " is " + json_number(e.value) + " in a valid row; a logit is "
                       "a finite number or \"-inf\" (null only in masked rows)");
      if (e.argument == "coef")
        return refused(at + " is " + json_number(e.value) + " in a valid row; a "
                       "coefficient is a finite number (null only in masked rows)");
      return refused(at + " is " + json_number(e.value) + ", not finite, in a valid token; "
                     "set mask" + row + " to 0, or pass --nonfinite propagate to compute "
                     "anyway");
    case input_reason::empty_row:
      return refused(at + " has no finite entry (every logit is \"-inf\"), so its "
                     "softmax is undefined; set mask" + row + " to 0");
    case input_reason::zero_reference:
      return refused(at + " gives zero probability (a \"-inf\" logit) to an entry where "
                     "logits give a positive one: reverse-kl = +inf and its gradient is "
                     "undefined (\"gradient\": false gives the value alone)");
    case input_reason::missing_behavior:
      return refused(
          "--spec '" + (s ? to_string(*s) : std::string()) + "' weights tokens by pi/mu" +
          (s ? " (is=" + std::string(to_string(s->importance.mode)) + ")" : std::string()) +
          " but the input has no \"behavior\": add the behaviour policy's log-probs, shaped "
          "as \"logp\"");
    case input_reason::bad_count:
      return refused(at + " " + json_number(e.value) + " must be -1 (count this batch) or a "
                     "global count of at least this batch's own " + json_number(e.limit) +
                     (at == "--tokens" ? " valid tokens" : " non-empty sequences") +
                     " (a global count covers every shard, this one included)");
    default:
      return refused(e.what());
  }
}

/// Runs f, turning the library's input errors into batch errors in the CLI's words.
template <class F>
auto in_cli_words(F&& f, Index positions, const spec* s = nullptr) -> decltype(f()) {
  try {
    return f();
  } catch (const input_error& e) {
    throw in_cli_words(e, positions, s);
  }
}

constexpr std::initializer_list<const char*> logp_keys = {"logp", "ref", "behavior", "mask",
                                                          "offsets"};

/// logp/ref input (docs/api.md): padded rows, or 1-D lists with "offsets".
template <class T>
nlohmann::json evaluate_json(const spec& s, const nlohmann::json& in, const options& opt) {
  require_known_keys(in, logp_keys, "logp/ref input");
  for (const char* key : {"logp", "ref"})
    if (!in.contains(key)) throw schema_error(std::string("input has no '") + key + "'");
  const bool has_behavior = in.contains("behavior"), has_mask = in.contains("mask");
  // One batch (padded: `positions` per sequence; packed: 0) into value and coef, with the
  // behaviour log-probs lb when the input has them, its errors in the CLI's words.
  auto run = [&](auto batch, const auto& lb, auto& value, auto& coef, Index positions) {
    return in_cli_words([&] {
      return has_behavior ? evaluate(s, batch.with_behavior(lb), value, coef, opt)
                          : evaluate(s, batch, value, coef, opt);
    }, positions, &s);
  };
  nlohmann::json out;
  if (in.contains("offsets")) {
    const auto lp = vector<T>(in["logp"], "logp", number<T>);
    const auto lr = vector<T>(in["ref"], "ref", number<T>);
    const auto offsets = vector<Index>(in["offsets"], "offsets", integer);
    column<T> value(lp.size()), coef(lp.size());
    const auto mask = has_mask ? vector<T>(in["mask"], "mask", mask_entry<T>) : column<T>();
    const auto lb = has_behavior ? vector<T>(in["behavior"], "behavior", number<T>) : column<T>();
    const summary r = has_mask ? run(packed(lp, lr, offsets, mask), lb, value, coef, 0)
                               : run(packed(lp, lr, offsets), lb, value, coef, 0);
    out = summary_json(s, r);
    out["value"] = to_json(value.data(), {value.size()});
    out["coef"] = to_json(coef.data(), {coef.size()});
  } else {
    const auto lp = matrix<T>(in["logp"], "logp", number<T>);
    const auto lr = matrix<T>(in["ref"], "ref", number<T>);
    rows<T> value(lp.rows(), lp.cols()), coef(lp.rows(), lp.cols());
    const auto mask = has_mask ? matrix<T>(in["mask"], "mask", mask_entry<T>) : rows<T>();
    const auto lb = has_behavior ? matrix<T>(in["behavior"], "behavior", number<T>) : rows<T>();
    const summary r = has_mask ? run(padded(lp, lr, mask), lb, value, coef, lp.cols())
                               : run(padded(lp, lr), lb, value, coef, lp.cols());
    out = summary_json(s, r);
    out["value"] = to_json(value.data(), {value.rows(), value.cols()});
    out["coef"] = to_json(coef.data(), {coef.rows(), coef.cols()});
  }
  return out;
}

// ---- full logits -----------------------------------------------------------------------

constexpr std::initializer_list<const char*> logits_keys = {
    "logits", "ref_logits", "mask",        "ids",       "coef",    "divergence",
    "lambda", "top_k",      "temperature", "log_probs", "gradient"};

/// The aggregation and beta of logits input: --spec holds only agg= and its constants
/// (agg-norm=, agg-eps=, agg-seq-eps=, agg-scale=) and beta= (e.g. agg=token-sum,beta=0.04);
/// an estimator term means nothing for exact divergences.
/// parse_spec reads the keys behind a stand-in term, so the grammar has one parser. A spec
/// it refuses raises spec_error, as parse_spec does for logp/ref input.
inline spec logits_spec(const std::string& text) {
  const std::string stand_in = "k1-in-reward";
  if (text.empty()) return parse_spec(stand_in);
  constexpr std::string_view keys[] = {"agg",         "agg-norm",  "agg-eps",
                                       "agg-seq-eps", "agg-scale", "beta"};
  for (const std::string_view part : klgrad::detail::split(text, ',')) {
    const std::string_view key = part.substr(0, part.find('='));
    if (key == part || std::find(std::begin(keys), std::end(keys), key) == std::end(keys))
      throw spec_error("logits input: --spec takes only agg=, agg-norm=, agg-eps=, "
                       "agg-seq-eps=, agg-scale= and beta= (e.g. "
                       "--spec agg=token-sum,beta=0.04), not '" + std::string(part) +
                       "'; the rest of a spec applies to sampled log-probabilities "
                       "(logp, ref)");
  }
  // The library quotes the spec as clip() shortens it.
  const std::string whole = stand_in + "," + text,
                    quoted = "spec '" + klgrad::detail::clip(whole) + "'";
  try {
    return parse_spec(whole);
  } catch (const spec_error& e) {
    std::string message = e.what();
    if (message.compare(0, quoted.size(), quoted) == 0)
      message = "spec '" + klgrad::detail::clip(text) + "'" + message.substr(quoted.size());
    throw spec_error(message);
  }
}

inline double real_setting(const nlohmann::json& in, const char* key, double fallback) {
  if (!in.contains(key)) return fallback;
  if (!in[key].is_number())
    throw schema_error(std::string(key) + " must be a number, got " + shown(in[key]));
  return in[key].get<double>();
}

inline bool flag_setting(const nlohmann::json& in, const char* key, bool fallback) {
  if (!in.contains(key)) return fallback;
  if (!in[key].is_boolean())
    throw schema_error(std::string(key) + " must be true or false, got " + shown(in[key]));
  return in[key].get<bool>();
}

/// Logits input (see docs/logits.md): "logits" and "ref_logits" as B x T x V (padded) or
/// N x V (the rows of one sequence), optional "mask" (B x T or N), "divergence", its
/// settings, and optional "ids" (+ "coef") for the sampled-token paths. Logits are stored as
/// S; the kernels compute, and the output holds, T (float for bf16 and fp16 logits).
template <class S>
nlohmann::json evaluate_logits_json(const nlohmann::json& in, logits_options opt) {
  using T = klgrad::detail::compute_t<S>;
  require_known_keys(in, logits_keys, "logits input");
  if (!in.contains("ref_logits"))
    throw schema_error("logits input has no 'ref_logits' (the reference's logits, shaped as "
                       "'logits')");

  const nlohmann::json& zj = in["logits"];
  const bool padded_rows = zj.is_array() && !zj.empty() && zj[0].is_array() &&
                           !zj[0].empty() && zj[0][0].is_array();
  const std::size_t depth = padded_rows ? 3 : 2;
  const char* layout = "B x T x V (padded) or N x V lists of logits";
  const auto z =
      read_tensor<S>(zj, "logits", probe_shape(zj, "logits", depth, layout), stored_logit<S>);
  const auto zr =
      read_tensor<S>(in["ref_logits"], "ref_logits", z.dims, stored_logit<S>, "logits");
  const shape per_row(z.dims.begin(), z.dims.end() - 1);  // B x T, or N
  const Index V = z.dims.back(), B = padded_rows ? z.dims[0] : 1,
              P = padded_rows ? z.dims[1] : z.dims[0], N = B * P;
  const bool has_mask = in.contains("mask");
  const auto mask =
      has_mask ? read_tensor<T>(in["mask"], "mask", per_row, mask_entry<T>, "logits") : tensor<T>{};
  const Eigen::Map<const rows<S>> zm(z.data.data(), N, V), zrm(zr.data.data(), N, V);
  const Eigen::Map<const rows<T>> mm(mask.data.data(), has_mask ? B : 0, has_mask ? P : 0);
  // One batch type with a mask or without (the mask is read as T, which is not S for
  // 16-bit logits: a mask entry of 1e-45 stays valid).
  const auto batch = [&]() -> logit_batch<S, T> {
    if (has_mask) return logit_rows(zm, zrm, mm);
    const auto all = logit_rows(zm, zrm, padded_rows ? P : 0);
    return {all.z, all.ref, {}, all.sequences, all.positions};
  }();

  std::string name = "reverse-kl";
  if (in.contains("divergence")) {
    if (!in["divergence"].is_string())
      throw schema_error("divergence must be a string, got " + shown(in["divergence"]));
    name = in["divergence"].get<std::string>();
  }
  constexpr divergence exact[] = {divergence::reverse_kl, divergence::forward_kl,
                                  divergence::jensen_shannon};
  const std::optional<top_k_form> form = top_k_form_named(name);
  const bool top_k = form.has_value();
  const auto found = std::find_if(std::begin(exact), std::end(exact),
                                  [&](divergence d) { return to_string(d) == name; });
  if (!top_k && found == std::end(exact))
    throw schema_error("divergence '" + name + "' is unknown; divergences: reverse-kl, "
                       "forward-kl, jensen-shannon, forward-kl-top-k, reverse-kl-top-k, "
                       "forward-kl-top-k-tail, reverse-kl-top-k-tail");
  const divergence d = top_k ? divergence::forward_kl : *found;
  if (in.contains("lambda")) {
    if (top_k || d != divergence::jensen_shannon)
      throw schema_error("lambda is the mixing weight of jensen-shannon; divergence '" + name +
                         "' takes none");
    opt.lambda = real_setting(in, "lambda", opt.lambda);
  }
  Index k = 0;
  if (in.contains("top_k") != top_k)
    throw schema_error(top_k ? "divergence '" + name + "' needs top_k, the number of the " +
                                   (policy_chooses(*form) ? "policy's" : "reference's") +
                                   " largest logits it keeps"
                             : "top_k applies only to the top-k divergences, not '" + name + "'");
  if (top_k) {
    const nlohmann::json& kj = in["top_k"];
    if (!kj.is_number_integer() || kj.get<std::int64_t>() < 1 || kj.get<std::int64_t>() > V)
      throw schema_error("top_k must be an integer in [1, V] = [1, " + std::to_string(V) +
                         "], got " + shown(kj));
    k = Index(kj.get<std::int64_t>());
  }
  opt.temperature = real_setting(in, "temperature", opt.temperature);
  opt.log_probs = flag_setting(in, "log_probs", opt.log_probs);
  const bool gradient = flag_setting(in, "gradient", true);
  const bool has_ids = in.contains("ids"), has_coef = in.contains("coef");
  if (has_coef && !has_ids)
    throw schema_error("coef needs ids: the sampled token of each row it back-propagates through");
  const auto ids = has_ids ? read_tensor<std::int64_t>(in["ids"], "ids", per_row, integer, "logits")
                           : tensor<std::int64_t>{};
  const auto coef =
      has_coef ? read_tensor<T>(in["coef"], "coef", per_row, number<T>, "logits") : tensor<T>{};

  const Index place = padded_rows ? P : 0;  // rows per sequence, for messages
  column<T> value(N);
  rows<T> grad(gradient ? N : 0, V);
  nlohmann::json out;
  logits_summary r;
  if (top_k) {
    rows<std::int64_t> indices(N, k);
    r = in_cli_words([&] {
      return gradient ? top_k_divergence(*form, batch, indices, value, grad, opt)
                      : top_k_divergence(*form, batch, indices, value, opt);
    }, place);
    shape dims = per_row;
    dims.push_back(k);
    out["indices"] = to_json(indices.data(), dims);
  } else {
    // The tool is the caller: it owns the workspace (the kernel never allocates), so that
    // each row's exponentials are computed once.
    const auto work = lend_workspace<T>(d, gradient, V, opt);
    r = in_cli_words([&] {
      return gradient ? logits_divergence(d, batch, value, grad, opt)
                      : logits_divergence(d, batch, value, opt);
    }, place);
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
    in_cli_words([&] {
      if (has_mask) selective_log_softmax(zm, idm, logp, mm, opt.temperature);
      else selective_log_softmax(zm, idm, logp, opt.temperature);
    }, place);
    out["logp"] = to_json(logp.data(), per_row);
    if (has_coef) {
      const Eigen::Map<const column<T>> cm(coef.data.data(), N);
      rows<T> logits_grad(N, V);
      in_cli_words([&] {
        if (has_mask) sampled_logits_gradient(zm, idm, cm, logits_grad, mm, opt.temperature);
        else sampled_logits_gradient(zm, idm, cm, logits_grad, opt.temperature);
      }, place);
      out["logits_grad"] = to_json(logits_grad.data(), z.dims);
    }
  }
  return out;
}

/// The command-line settings of `klgrad eval`.
struct settings {
  std::string spec, input, type = "double", nonfinite = "raise";
  Index tokens = -1, sequences = -1;
};

/// klgrad eval on a parsed input: logits input when it has "logits", else logp/ref input.
inline nlohmann::json evaluate_input(const nlohmann::json& in, const settings& cfg) {
  if (!in.is_object()) throw schema_error("the input must hold a JSON object, got " + shown(in));
  if (in.contains("logits")) {
    if (cfg.nonfinite != "raise")
      throw settings_error("--nonfinite propagate applies to logp/ref input; logits input "
                           "always raises on a NaN or +inf entry in a valid row");
    const spec s = logits_spec(cfg.spec);
    logits_options opt;
    opt.aggregation = s.aggregation;
    opt.aggregation_constants = s.aggregation_constants;
    opt.beta = s.beta;
    opt.counts.tokens = cfg.tokens;
    opt.counts.sequences = cfg.sequences;
    if (cfg.type == "bf16") return evaluate_logits_json<Eigen::bfloat16>(in, opt);
    if (cfg.type == "fp16") return evaluate_logits_json<Eigen::half>(in, opt);
    return cfg.type == "float" ? evaluate_logits_json<float>(in, opt)
                               : evaluate_logits_json<double>(in, opt);
  }
  if (cfg.type == "bf16" || cfg.type == "fp16")
    throw settings_error("--type " + cfg.type + " applies to logits input (16-bit logits); "
                         "logp/ref input computes in --type float or double");
  if (cfg.spec.empty())
    throw settings_error("--spec is required for logp/ref input, e.g. --spec k3-as-loss");
  const spec s = parse_spec(cfg.spec);
  options opt;
  opt.counts.tokens = cfg.tokens;
  opt.counts.sequences = cfg.sequences;
  opt.nonfinite = cfg.nonfinite == "raise" ? nonfinite_policy::raise : nonfinite_policy::propagate;
  return cfg.type == "float" ? evaluate_json<float>(s, in, opt) : evaluate_json<double>(s, in, opt);
}

}  // namespace eval_input
}  // namespace klgrad::frontend
