// The full-vocabulary functions: logits_divergence, selective_log_softmax and
// sampled_logits_gradient over logits of shape N x V or B x T x V (include/klgrad/logits.hpp,
// sampled.hpp). Masks and ids (N entries, small beside the logits) are read as contiguous
// uint8 / int64, copied when they are not; logits are read in place, 16-bit logits (numpy
// float16, or bfloat16 passed as its 16 bits with bf16=True) included, widened to float by
// the kernels.
#include "binding.hpp"

#include <klgrad/logits.hpp>
#include <klgrad/sampled.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

namespace klgrad::python {
namespace {

/// How the logits are stored: the kernels' scalar type S.
enum class storage { f32, f64, f16, bf16 };

/// Logits checked: float16/bfloat16/float32/float64, N x V or B x T x V with rows V elements
/// long and evenly spaced (the first two dimensions of a 3-D array merge into one).
struct logit_array {
  py::array a;
  storage kind = storage::f32;
  Index rows = 0, cols = 0, stride = 0, positions = 0;  ///< N, V, row stride, T (0: 2-D)
  std::vector<py::ssize_t> per_row;                   ///< (N,) or (B, T)
};

/// bf16: the array holds bfloat16 logits as their 16 bits (int16 / uint16; numpy has no
/// bfloat16), as klgrad/__init__.py passes a torch.bfloat16 tensor.
logit_array logits_of(py::handle x, const char* name, bool bf16 = false) {
  logit_array l;
  l.a = array_argument(x, name);
  const py::array& a = l.a;
  const char kind = a.dtype().kind();
  if (bf16) {
    if ((kind != 'i' && kind != 'u') || a.itemsize() != 2)
      throw argument_error{PyExc_TypeError,
                           std::string(name) + "= has dtype " + dtype_text(a) +
                               " with bf16=True; bfloat16 logits come as their 16 bits, "
                               "int16 or uint16 (tensor.view(torch.int16))"};
    l.kind = storage::bf16;
  } else if (kind == 'f' && a.itemsize() == 2) {
    l.kind = storage::f16;
  } else if (kind == 'f' && a.itemsize() == 4) {
    l.kind = storage::f32;
  } else if (kind == 'f' && a.itemsize() == 8) {
    l.kind = storage::f64;
  } else {
    throw argument_error{PyExc_TypeError,
                         std::string(name) + "= has dtype " + dtype_text(a) +
                             "; klgrad reads float16, bfloat16, float32 or float64 logits"};
  }
  if (a.ndim() != 2 && a.ndim() != 3)
    throw argument_error{exceptions().shape_error,
                         std::string(name) + "= has shape " + shape_text(a) +
                             "; logits are N x V or B x T x V"};
  l.cols = Index(a.shape(a.ndim() - 1));
  l.rows = a.ndim() == 2 ? Index(a.shape(0)) : Index(a.shape(0) * a.shape(1));
  l.positions = a.ndim() == 3 ? Index(a.shape(1)) : 0;
  l.per_row.assign(a.shape(), a.shape() + a.ndim() - 1);
  const py::ssize_t item = a.itemsize(), last = a.strides(a.ndim() - 1);
  const py::ssize_t row = a.strides(a.ndim() - 2);
  const bool merged = a.ndim() == 2 || a.shape(0) <= 1 || a.strides(0) == a.shape(1) * row;
  if ((l.cols > 1 && last != item) || row < 0 || row % item != 0 || !merged)
    throw argument_error{exceptions().shape_error,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " and strides that klgrad cannot read in place (each row of V "
                             "logits contiguous, rows evenly spaced); pass a contiguous array "
                             "(numpy.ascontiguousarray / tensor.contiguous())"};
  l.stride = l.rows > 1 ? Index(row / item) : l.cols;
  return l;
}

template <class T>
rows_map<T> rows_of(const logit_array& l) {
  return rows_map<T>(static_cast<const T*>(l.a.data()), l.rows, l.cols,
                     Eigen::OuterStride<>(l.stride));
}

/// Calls run(S{}) with the logits' storage type S.
template <class F>
auto with_storage(const logit_array& l, F&& run) {
  switch (l.kind) {
    case storage::f16: return run(Eigen::half{});
    case storage::bf16: return run(Eigen::bfloat16{});
    case storage::f64: return run(double{});
    case storage::f32: break;
  }
  return run(float{});
}

/// An array of N entries (per row of the logits), dtype-converted to S and contiguous
/// (copied only when it is not already so); shape checked against the logits' rows.
template <class S>
py::array per_row_of(py::handle x, const char* name, const logit_array& l, const char* what) {
  py::array a = array_argument(x, name);
  const char kind = a.dtype().kind();
  if (std::is_same_v<S, std::int64_t> && kind != 'i' && kind != 'u')
    throw argument_error{PyExc_TypeError, std::string(name) + "= has dtype " + dtype_text(a) +
                                              "; " + what};
  py::ssize_t n = 1;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) n *= a.shape(d);
  const bool same_shape =
      std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()) == l.per_row;
  if (!same_shape && !(a.ndim() == 1 && Index(n) == l.rows))
    throw argument_error{exceptions().shape_error, std::string(name) + "= has shape " +
                                                       shape_text(a) + " but logits= has shape " +
                                                       shape_text(l.a) + " (one entry per row)"};
  if (std::is_same_v<S, std::uint8_t> && kind != 'b') a = py::array(a.attr("__ne__")(0));
  return py::array_t<S, py::array::c_style | py::array::forcecast>::ensure(a);
}

/// A new array of T (the compute type: the logits' own, float32 for 16-bit logits).
template <class T>
py::array new_array(std::vector<py::ssize_t> shape) {
  return py::array(py::dtype::of<T>(), shape);
}

template <class T>
T* data_of(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

struct divergence_args {
  logit_array z, zr;
  std::optional<py::array> mask;  ///< uint8, N entries
  divergence d = divergence::reverse_kl;
  std::optional<top_k_form> form;  ///< a top-k form, with top_k > 0
  Index top_k = 0;
  bool gradient = true;
  logits_options opt;
};

/// Logits stored as S, results in T (float for 16-bit logits).
template <class S, class T = detail::compute_t<S>>
py::tuple run_divergence(const divergence_args& c) {
  const auto z = rows_of<S>(c.z), zr = rows_of<S>(c.zr);
  py::array value = new_array<T>(c.z.per_row);
  py::array grad = new_array<T>(
      {py::ssize_t(c.gradient ? c.z.rows : 0), py::ssize_t(c.gradient ? c.z.cols : 0)});
  std::vector<py::ssize_t> index_shape = c.z.per_row;
  index_shape.push_back(py::ssize_t(c.top_k));
  py::array_t<std::int64_t> indices(c.top_k > 0 ? index_shape : std::vector<py::ssize_t>{0});
  using out_rows = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  const Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> v(data_of<T>(value), c.z.rows);
  const out_rows g(data_of<T>(grad), c.gradient ? c.z.rows : 0, c.z.cols);
  const Eigen::Map<Eigen::Array<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
      idx(indices.mutable_data(), c.top_k > 0 ? c.z.rows : 0, c.top_k);
  // The binding is the caller: it owns Jensen-Shannon's workspace (the kernel never
  // allocates), so that each row's exponentials are computed once.
  logits_options opt = c.opt;
  std::vector<T> work;
  if (c.top_k == 0 && c.d == divergence::jensen_shannon) {
    work.resize(std::size_t(jensen_shannon_workspace_size<T>(c.z.cols)));
    opt.workspace = work.data();
    opt.workspace_size = Index(work.size());
  }
  auto run = [&](const auto& batch) {
    py::gil_scoped_release unlocked;
    if (c.top_k > 0)
      return c.gradient ? top_k_divergence(*c.form, batch, idx, v, g, c.opt)
                        : top_k_divergence(*c.form, batch, idx, v, c.opt);
    return c.gradient ? logits_divergence(c.d, batch, v, g, opt)
                      : logits_divergence(c.d, batch, v, opt);
  };
  logits_summary r;
  if (c.mask) {
    const auto& m = *c.mask;
    const Index b = c.z.positions > 0 ? Index(c.z.per_row[0]) : 1;
    const rows_map<std::uint8_t> mm(static_cast<const std::uint8_t*>(m.data()), b,
                                    c.z.rows / std::max<Index>(b, 1), Eigen::OuterStride<>(
                                        c.z.rows / std::max<Index>(b, 1)));
    r = run(logit_rows(z, zr, mm));
  } else {
    r = run(logit_rows(z, zr, c.z.positions));
  }
  if (c.gradient) grad = grad.attr("reshape")(c.z.a.attr("shape"));
  return py::make_tuple(value, c.gradient ? py::object(grad) : py::object(py::none()),
                        c.top_k > 0 ? py::object(indices) : py::object(py::none()), r.loss,
                        r.mean, r.rows, r.sequences);
}

divergence divergence_of(const std::string& name, std::optional<top_k_form>& form) {
  constexpr divergence exact[] = {divergence::reverse_kl, divergence::forward_kl,
                                  divergence::jensen_shannon};
  form = top_k_form_named(name);
  if (form) return divergence::forward_kl;
  for (const divergence d : exact)
    if (to_string(d) == name) return d;
  throw argument_error{PyExc_ValueError,
                       "divergence= \"" + name +
                           "\" is unknown; divergences: reverse-kl, forward-kl, jensen-shannon, "
                           "forward-kl-top-k, reverse-kl-top-k, forward-kl-top-k-tail, "
                           "reverse-kl-top-k-tail"};
}

/// (value, grad or None, indices or None, loss, mean, rows, sequences)
py::tuple divergence_binding(py::handle logits, py::handle ref_logits, const std::string& name,
                             double lam, const py::object& top_k, double temperature,
                             py::handle mask, bool log_probs, bool gradient, bool bf16) {
  return translated([&] {
    divergence_args c;
    c.z = logits_of(logits, "logits", bf16);
    c.zr = logits_of(ref_logits, "ref_logits", bf16);
    if (!c.zr.a.dtype().equal(c.z.a.dtype()))
      throw argument_error{PyExc_TypeError, "ref_logits= has dtype " + dtype_text(c.zr.a) +
                                                " but logits= has dtype " + dtype_text(c.z.a)};
    if (c.zr.a.ndim() != c.z.a.ndim() || c.zr.rows != c.z.rows || c.zr.cols != c.z.cols)
      throw argument_error{exceptions().shape_error, "ref_logits= has shape " +
                                                         shape_text(c.zr.a) +
                                                         " but logits= has shape " +
                                                         shape_text(c.z.a)};
    c.d = divergence_of(name, c.form);
    const bool is_top_k = c.form.has_value();
    if (is_top_k != !top_k.is_none())
      throw argument_error{
          PyExc_ValueError,
          is_top_k ? "divergence=\"" + name + "\" needs top_k= (the number of the " +
                         (policy_chooses(*c.form) ? "policy's" : "reference's") +
                         " largest logits it keeps)"
                   : "top_k= applies only to the top-k divergences, not \"" + name + "\""};
    if (is_top_k) {
      const long long k = py::isinstance<py::int_>(top_k) ? top_k.cast<long long>() : 0;
      if (k < 1 || k > c.z.cols)
        throw argument_error{PyExc_ValueError, "top_k= must be an int in [1, V] = [1, " +
                                                   std::to_string(c.z.cols) + "], got " +
                                                   std::string(py::repr(top_k))};
      c.top_k = Index(k);
    }
    if (!mask.is_none()) c.mask = per_row_of<std::uint8_t>(mask, "mask", c.z, "");
    c.gradient = gradient;
    c.opt.lambda = lam;
    c.opt.temperature = temperature;
    c.opt.log_probs = log_probs;
    return with_storage(c.z, [&](auto s) { return run_divergence<decltype(s)>(c); });
  });
}

template <class S, class T = detail::compute_t<S>>
py::array run_selective(const logit_array& l, const py::array& ids,
                        const std::optional<py::array>& mask, double temperature) {
  const auto z = rows_of<S>(l);
  const vector_map<std::int64_t> y(static_cast<const std::int64_t*>(ids.data()), l.rows);
  py::array out = new_array<T>(l.per_row);
  const Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> lp(data_of<T>(out), l.rows);
  py::gil_scoped_release unlocked;
  if (mask)
    selective_log_softmax(z, y, lp,
                          vector_map<std::uint8_t>(static_cast<const std::uint8_t*>(mask->data()),
                                                   l.rows),
                          temperature);
  else
    selective_log_softmax(z, y, lp, temperature);
  return out;
}

py::array selective_binding(py::handle logits, py::handle ids, py::handle mask,
                            double temperature, bool bf16) {
  return translated([&] {
    const logit_array l = logits_of(logits, "logits", bf16);
    const py::array y = per_row_of<std::int64_t>(ids, "ids", l, "token ids are integers");
    std::optional<py::array> m;
    if (!mask.is_none()) m = per_row_of<std::uint8_t>(mask, "mask", l, "");
    return with_storage(
        l, [&](auto s) { return run_selective<decltype(s)>(l, y, m, temperature); });
  });
}

template <class S, class T = detail::compute_t<S>>
py::array run_sampled(const logit_array& l, const py::array& ids, const py::array& coef,
                      const std::optional<py::array>& mask, double temperature) {
  const auto z = rows_of<S>(l);
  const vector_map<std::int64_t> y(static_cast<const std::int64_t*>(ids.data()), l.rows);
  const vector_map<T> c(static_cast<const T*>(coef.data()), l.rows);
  py::array grad = new_array<T>({py::ssize_t(l.rows), py::ssize_t(l.cols)});
  {
    const Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> g(
        data_of<T>(grad), l.rows, l.cols);
    py::gil_scoped_release unlocked;
    if (mask)
      sampled_logits_gradient(
          z, y, c, g,
          vector_map<std::uint8_t>(static_cast<const std::uint8_t*>(mask->data()), l.rows),
          temperature);
    else
      sampled_logits_gradient(z, y, c, g, temperature);
  }
  return grad.attr("reshape")(l.a.attr("shape"));
}

py::array sampled_binding(py::handle logits, py::handle ids, py::handle coef, py::handle mask,
                          double temperature, bool bf16) {
  return translated([&] {
    const logit_array l = logits_of(logits, "logits", bf16);
    const py::array y = per_row_of<std::int64_t>(ids, "ids", l, "token ids are integers");
    const py::array c_in = array_argument(coef, "coef");
    // coef has the logits' dtype, or float32 (the gradient's dtype) for 16-bit logits:
    // float16 coefficients are widened to it (N entries, copied); bfloat16 ones come as
    // float32 from klgrad/__init__.py.
    const bool narrow = l.kind == storage::f16 || l.kind == storage::bf16;
    const bool float32 = c_in.dtype().kind() == 'f' && c_in.itemsize() == 4;
    if (narrow ? !float32 && !(l.kind == storage::f16 && c_in.dtype().equal(l.a.dtype()))
               : !c_in.dtype().equal(l.a.dtype()))
      throw argument_error{PyExc_TypeError,
                           "coef= has dtype " + dtype_text(c_in) + " but logits= has dtype " +
                               (l.kind == storage::bf16 ? "bfloat16" : dtype_text(l.a)) +
                               (narrow ? " (16-bit logits take float32 coef)" : "")};
    const py::array c = l.kind == storage::f64 ? per_row_of<double>(coef, "coef", l, "")
                                               : per_row_of<float>(coef, "coef", l, "");
    std::optional<py::array> m;
    if (!mask.is_none()) m = per_row_of<std::uint8_t>(mask, "mask", l, "");
    return with_storage(
        l, [&](auto s) { return run_sampled<decltype(s)>(l, y, c, m, temperature); });
  });
}

}  // namespace

void bind_logits(py::module_& m) {
  m.def("logits_divergence", &divergence_binding, py::arg("logits"), py::arg("ref_logits"),
        py::arg("divergence"), py::arg("lam"), py::arg("top_k"), py::arg("temperature"),
        py::arg("mask"), py::arg("log_probs"), py::arg("gradient"), py::arg("bf16") = false);
  m.def("selective_log_softmax", &selective_binding, py::arg("logits"), py::arg("ids"),
        py::arg("mask"), py::arg("temperature"), py::arg("bf16") = false);
  m.def("sampled_logits_gradient", &sampled_binding, py::arg("logits"), py::arg("ids"),
        py::arg("coef"), py::arg("mask"), py::arg("temperature"), py::arg("bf16") = false);
}

}  // namespace klgrad::python
