// The full-vocabulary functions: logits_divergence, selective_log_softmax and
// sampled_logits_gradient over logits of shape N x V or B x T x V (include/klgrad/logits.hpp,
// sampled.hpp). Logits are read in place in their own dtype (float32, float64, and 16-bit
// float16 / bfloat16, widened to float by the kernels); the per-row arrays (mask, ids, coef)
// and the outputs come from klgrad/__init__.py in the dtypes the kernels read, contiguous.
#include "binding.hpp"

#include <klgrad/logits.hpp>
#include <klgrad/sampled.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace klgrad::python {
namespace {

/// Logits checked: float16/bfloat16/float32/float64, N x V or B x T x V with rows V elements
/// long and evenly spaced (the first two dimensions of a 3-D array merge into one).
struct logit_array {
  array a;
  element kind = element::f32;
  Index rows = 0, cols = 0, stride = 0, positions = 0;  ///< N, V, row stride, T (0: 2-D)
};

logit_array logits_of(nb::handle x, const char* name) {
  logit_array l;
  l.a = array_argument(x, name);
  const array& a = l.a;
  l.kind = element_of(a);
  if (l.kind != element::f16 && l.kind != element::bf16 && l.kind != element::f32 &&
      l.kind != element::f64)
    throw argument_error{python_error::type,
                         std::string(name) + "= has dtype " + dtype_text(a) +
                             "; klgrad reads float16, bfloat16, float32 or float64 logits"};
  const std::size_t n = a.ndim();
  if (n != 2 && n != 3)
    throw argument_error{python_error::shape, std::string(name) + "= has shape " +
                                                  shape_text(a) + "; logits are N x V or B x T x V"};
  l.cols = Index(a.shape(n - 1));
  l.rows = n == 2 ? Index(a.shape(0)) : Index(a.shape(0) * a.shape(1));
  l.positions = n == 3 ? Index(a.shape(1)) : 0;
  const std::int64_t last = a.stride(n - 1), row = a.stride(n - 2);
  const bool merged = n == 2 || a.shape(0) <= 1 || a.stride(0) == std::int64_t(a.shape(1)) * row;
  if (l.rows > 0 && l.cols > 0 && ((l.cols > 1 && last != 1) || row < 0 || !merged))
    throw argument_error{python_error::shape,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " and strides that klgrad cannot read in place (each row of V "
                             "logits contiguous, rows evenly spaced); pass a contiguous array "
                             "(numpy.ascontiguousarray / tensor.contiguous())"};
  l.stride = l.rows > 1 ? Index(row) : l.cols;
  return l;
}

template <class S>
rows_map<S> rows_of(const logit_array& l) {
  return rows_map<S>(data_of<S>(l.a), l.rows, l.cols, Eigen::OuterStride<>(l.stride));
}

/// Calls run(S{}) with the logits' storage type S.
template <class F>
auto with_storage(const logit_array& l, F&& run) {
  switch (l.kind) {
    case element::f16: return run(Eigen::half{});
    case element::bf16: return run(Eigen::bfloat16{});
    case element::f64: return run(double{});
    default: break;
  }
  return run(float{});
}

/// The element an array of the compute type T holds.
template <class T>
constexpr element element_for() {
  if constexpr (std::is_same_v<T, double>) return element::f64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return element::i64;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return element::u8;
  else return element::f32;
}

/// A per-row array (N entries: the logits' leading shape or 1-D), contiguous, of element
/// `want` (bool counts as uint8), or a refusal naming it.
array per_row_of(nb::handle x, const char* name, const logit_array& l, element want,
                 bool writable = false) {
  const array a = writable ? array(output_argument(x, name)) : array_argument(x, name);
  const element e = element_of(a) == element::boolean ? element::u8 : element_of(a);
  if (e != want)
    throw argument_error{python_error::type, std::string(name) + "= has dtype " +
                                                 dtype_text(a) + "; the kernel reads it as " +
                                                 (want == element::u8    ? "bool or uint8"
                                                  : want == element::i64 ? "int64"
                                                  : want == element::f64 ? "float64"
                                                                         : "float32")};
  std::size_t n = 1;
  for (std::size_t d = 0; d < a.ndim(); ++d) n *= a.shape(d);
  const std::size_t leading = l.a.ndim() - 1;
  bool same = a.ndim() == leading;
  for (std::size_t d = 0; same && d < leading; ++d) same = a.shape(d) == l.a.shape(d);
  if (!same && !(a.ndim() == 1 && Index(n) == l.rows))
    throw argument_error{python_error::shape, std::string(name) + "= has shape " +
                                                  shape_text(a) + " but logits= has shape " +
                                                  shape_text(l.a) + " (one entry per row)"};
  require_row_major(a, name);
  return a;
}

/// An output of the logits' own shape (a gradient): compute type, contiguous, writable.
array full_output_of(nb::handle x, const char* name, const logit_array& l, element want) {
  const array a(output_argument(x, name));
  if (element_of(a) != want)
    throw argument_error{python_error::type, std::string(name) + "= has dtype " +
                                                 dtype_text(a) + ", not the kernel's " +
                                                 (want == element::f64 ? "float64" : "float32")};
  require_shape(a, name, l.a, "logits");
  require_row_major(a, name);
  return a;
}

template <class T>
using out_vector = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using out_rows = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

struct divergence_args {
  logit_array z, zr;
  std::optional<array> mask;  ///< uint8 / bool, N entries
  array value, grad, indices;
  divergence d = divergence::reverse_kl;
  std::optional<top_k_form> form;  ///< a top-k form, with top_k > 0
  Index top_k = 0;
  bool gradient = true;
  logits_options opt;
};

/// Logits stored as S, results in T (float for 16-bit logits).
template <class S, class T = detail::compute_t<S>>
logits_summary run_divergence(const divergence_args& c) {
  const auto z = rows_of<S>(c.z), zr = rows_of<S>(c.zr);
  const out_vector<T> v(mutable_data_of<T>(c.value), c.z.rows);
  const out_rows<T> g(c.gradient ? mutable_data_of<T>(c.grad) : nullptr,
                      c.gradient ? c.z.rows : 0, c.z.cols);
  const Eigen::Map<Eigen::Array<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
      idx(c.top_k > 0 ? mutable_data_of<std::int64_t>(c.indices) : nullptr,
          c.top_k > 0 ? c.z.rows : 0, c.top_k);
  // The binding is the caller: it owns the workspace (the kernel never allocates), so that
  // each row's exponentials are computed once.
  logits_options opt = c.opt;
  const auto work = c.top_k == 0 ? lend_workspace<T>(c.d, c.gradient, c.z.cols, opt) : nullptr;
  auto run = [&](const auto& batch) {
    nb::gil_scoped_release unlocked;
    if (c.top_k > 0)
      return c.gradient ? top_k_divergence(*c.form, batch, idx, v, g, c.opt)
                        : top_k_divergence(*c.form, batch, idx, v, c.opt);
    return c.gradient ? logits_divergence(c.d, batch, v, g, opt)
                      : logits_divergence(c.d, batch, v, opt);
  };
  if (!c.mask) return run(logit_rows(z, zr, c.z.positions));
  const Index b = c.z.positions > 0 ? Index(c.z.a.shape(0)) : 1;
  const Index per = c.z.rows / std::max<Index>(b, 1);
  return run(logit_rows(z, zr, rows_map<std::uint8_t>(data_of<std::uint8_t>(*c.mask), b, per,
                                                       Eigen::OuterStride<>(per))));
}

/// The divergence called `name`: a full-vocabulary one, or a top-k form (set in `form`).
divergence divergence_of(const std::string& name, std::optional<top_k_form>& form) {
  form = top_k_form_named(name);
  if (form) return divergence::forward_kl;
  std::string known;
  for (const divergence d : all_divergences) {
    if (to_string(d) == name) return d;
    known += std::string(known.empty() ? "" : ", ") + std::string(to_string(d));
  }
  for (const top_k_form f : top_k_forms) known += ", " + std::string(to_string(f));
  throw argument_error{python_error::value,
                       "divergence= \"" + name + "\" is unknown; divergences: " + known};
}

/// (loss, mean, rows, sequences); value (and grad, indices when given) written.
nb::tuple divergence_binding(nb::handle logits, nb::handle ref_logits, const std::string& name,
                             double lam, nb::handle top_k, double temperature, nb::handle mask,
                             bool log_probs, nb::handle value, nb::handle grad,
                             nb::handle indices) {
  divergence_args c;
  c.z = logits_of(logits, "logits");
  c.zr = logits_of(ref_logits, "ref_logits");
  if (c.zr.a.dtype() != c.z.a.dtype())
    throw argument_error{python_error::type, "ref_logits= has dtype " + dtype_text(c.zr.a) +
                                                 " but logits= has dtype " + dtype_text(c.z.a)};
  require_shape(c.zr.a, "ref_logits", c.z.a, "logits");
  c.d = divergence_of(name, c.form);
  const bool is_top_k = c.form.has_value();
  if (is_top_k != !top_k.is_none())
    throw argument_error{
        python_error::value,
        is_top_k ? "divergence=\"" + name + "\" needs top_k= (the number of the " +
                       (policy_chooses(*c.form) ? "policy's" : "reference's") +
                       " largest logits it keeps)"
                 : "top_k= applies only to the top-k divergences, not \"" + name + "\""};
  if (is_top_k) {
    const bool is_int = PyLong_Check(top_k.ptr()) && !PyBool_Check(top_k.ptr());
    const long long k = is_int ? PyLong_AsLongLong(top_k.ptr()) : 0;
    if (PyErr_Occurred()) PyErr_Clear();
    if (k < 1 || k > c.z.cols)
      throw argument_error{python_error::value, "top_k= must be an int in [1, V] = [1, " +
                                                    std::to_string(c.z.cols) + "], got " +
                                                    nb::cast<std::string>(nb::repr(top_k))};
    c.top_k = Index(k);
  }
  if (!mask.is_none()) c.mask = per_row_of(mask, "mask", c.z, element::u8);
  const element out = c.z.kind == element::f64 ? element::f64 : element::f32;
  c.value = per_row_of(value, "value", c.z, out, true);
  c.gradient = !grad.is_none();
  if (c.gradient) c.grad = full_output_of(grad, "grad", c.z, out);
  if (is_top_k) {
    c.indices = array(output_argument(indices, "indices"));
    if (element_of(c.indices) != element::i64 ||
        c.indices.size() != std::size_t(c.z.rows * c.top_k))
      throw argument_error{python_error::shape, "indices= must be int64 with N x top_k entries"};
  }
  c.opt.lambda = lam;
  c.opt.temperature = temperature;
  c.opt.log_probs = log_probs;
  const logits_summary r =
      with_storage(c.z, [&](auto s) { return run_divergence<decltype(s)>(c); });
  return nb::make_tuple(r.loss, r.mean, r.rows, r.sequences);
}

/// The per-row arguments of the sampled paths: ids (int64), mask (bool / uint8) or none.
struct sampled_args {
  logit_array l;
  array ids;
  std::optional<array> mask;
};

sampled_args sampled_of(nb::handle logits, nb::handle ids, nb::handle mask) {
  sampled_args a{logits_of(logits, "logits"), {}, {}};
  a.ids = per_row_of(ids, "ids", a.l, element::i64);
  if (!mask.is_none()) a.mask = per_row_of(mask, "mask", a.l, element::u8);
  return a;
}

/// Calls f(mask view...) with the mask as a vector view, or with none.
template <class F>
void with_row_mask(const sampled_args& a, F&& f) {
  nb::gil_scoped_release unlocked;
  if (a.mask) f(vector_map<std::uint8_t>(data_of<std::uint8_t>(*a.mask), a.l.rows));
  else f();
}

void selective_binding(nb::handle logits, nb::handle ids, nb::handle mask, double temperature,
                       nb::handle out) {
  const sampled_args a = sampled_of(logits, ids, mask);
  const element want = a.l.kind == element::f64 ? element::f64 : element::f32;
  const array o = per_row_of(out, "out", a.l, want, true);
  with_storage(a.l, [&](auto s) {
    using S = decltype(s);
    using T = detail::compute_t<S>;
    const vector_map<std::int64_t> y(data_of<std::int64_t>(a.ids), a.l.rows);
    const out_vector<T> lp(mutable_data_of<T>(o), a.l.rows);
    with_row_mask(a, [&](const auto&... m) {
      selective_log_softmax(rows_of<S>(a.l), y, lp, m..., temperature);
    });
    return 0;
  });
}

void sampled_binding(nb::handle logits, nb::handle ids, nb::handle coef, nb::handle mask,
                     double temperature, nb::handle grad) {
  const sampled_args a = sampled_of(logits, ids, mask);
  const element want = a.l.kind == element::f64 ? element::f64 : element::f32;
  const array c = per_row_of(coef, "coef", a.l, want);
  const array g = full_output_of(grad, "grad", a.l, want);
  with_storage(a.l, [&](auto s) {
    using S = decltype(s);
    using T = detail::compute_t<S>;
    const vector_map<std::int64_t> y(data_of<std::int64_t>(a.ids), a.l.rows);
    const vector_map<T> cv(data_of<T>(c), a.l.rows);
    const out_rows<T> gm(mutable_data_of<T>(g), a.l.rows, a.l.cols);
    with_row_mask(a, [&](const auto&... m) {
      sampled_logits_gradient(rows_of<S>(a.l), y, cv, gm, m..., temperature);
    });
    return 0;
  });
}

}  // namespace

void bind_logits(nb::module_& m) {
  m.def("logits_divergence", &divergence_binding, nb::arg("logits"), nb::arg("ref_logits"),
        nb::arg("divergence"), nb::arg("lam"), nb::arg("top_k").none(), nb::arg("temperature"),
        nb::arg("mask").none(), nb::arg("log_probs"), nb::arg("value").none(),
        nb::arg("grad").none(), nb::arg("indices").none());
  m.def("selective_log_softmax", &selective_binding, nb::arg("logits"), nb::arg("ids"),
        nb::arg("mask").none(), nb::arg("temperature"), nb::arg("out").none());
  m.def("sampled_logits_gradient", &sampled_binding, nb::arg("logits"), nb::arg("ids"),
        nb::arg("coef"), nb::arg("mask").none(), nb::arg("temperature"), nb::arg("grad").none());
}

}  // namespace klgrad::python
