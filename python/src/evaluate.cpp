// klgrad.evaluate's arguments checked in the words of the Python interface, then handed to
// the kernel for their scalar type and layout (evaluate.hpp).
#include "evaluate.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

namespace klgrad::python {
namespace {

std::string accepted_floats(const char* name, const py::array& a) {
  return std::string(name) + "= has dtype " + dtype_text(a) +
         "; klgrad computes in float32 or float64 (cast bfloat16/float16 log-probs with "
         ".float() first)";
}

/// A float array of logp's dtype and ndim, or a refusal naming both.
void require_like_logp(const py::array& a, const char* name, const py::array& logp) {
  if (!a.dtype().equal(logp.dtype()))
    throw argument_error{PyExc_TypeError, std::string(name) + "= has dtype " + dtype_text(a) +
                                              " but logp= has dtype " + dtype_text(logp) +
                                              "; pass them in one dtype (float32 or float64)"};
  if (a.ndim() != logp.ndim())
    throw argument_error{exceptions().shape_error, std::string(name) + "= has shape " +
                                                       shape_text(a) + " but logp= has shape " +
                                                       shape_text(logp)};
}

mask_kind mask_type_of(py::array& mask, const py::array& logp) {
  if (mask.ndim() != logp.ndim())
    throw argument_error{exceptions().shape_error, "mask= has shape " + shape_text(mask) +
                                                       " but logp= has shape " + shape_text(logp)};
  const char kind = mask.dtype().kind();
  const py::ssize_t size = mask.itemsize();
  if (kind == 'b' || ((kind == 'i' || kind == 'u') && size == 1)) return mask_kind::u8;
  if ((kind == 'i' || kind == 'u') && size == 4) return mask_kind::i32;
  if ((kind == 'i' || kind == 'u') && size == 8) return mask_kind::i64;
  if (kind == 'f' && size == 4) return mask_kind::f32;
  if (kind == 'f' && size == 8) return mask_kind::f64;
  if (kind == 'i' || kind == 'u' || kind == 'f') {  // int16, float16: read as mask != 0 (a copy)
    mask = py::array(mask.attr("__ne__")(0));
    return mask_kind::u8;
  }
  throw argument_error{PyExc_TypeError,
                       "mask= has dtype " + dtype_text(mask) +
                           "; a mask is bool, an integer or a float type (nonzero = valid)"};
}

/// offsets as contiguous int64 (B + 1 entries, copied: they are few).
py::array offsets_of(py::handle x) {
  py::array a = array_argument(x, "offsets");
  if (a.ndim() != 1)
    throw argument_error{exceptions().shape_error,
                         "offsets= has shape " + shape_text(a) +
                             "; offsets of a packed batch are 1-D (B + 1 entries)"};
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw argument_error{PyExc_TypeError,
                         "offsets= has dtype " + dtype_text(a) + "; offsets are integers"};
  return py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
}

/// A global count (tokens=, sequences=): None (count the local batch) or a positive int.
Index count_of(const py::object& x, const char* name) {
  if (x.is_none()) return -1;
  if (!py::isinstance<py::int_>(x) || x.get_type().is(py::type::of(py::bool_())) ||
      x.cast<long long>() < 1)
    throw argument_error{PyExc_ValueError,
                         std::string(name) + "= must be a positive int (the count over every "
                                             "shard of a data-parallel batch) or None, got " +
                             std::string(py::repr(x))};
  return Index(x.cast<long long>());
}

/// An output array: the caller's (checked: logp's dtype and shape) or a new one.
py::array output_of(py::handle x, const char* name, const py::array& logp) {
  if (x.is_none()) {
    std::vector<py::ssize_t> shape(logp.shape(), logp.shape() + logp.ndim());
    return py::array(logp.dtype(), shape);
  }
  py::array a = array_argument(x, name);
  require_like_logp(a, name, logp);
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != logp.shape(d))
      throw argument_error{exceptions().shape_error, std::string(name) + "= has shape " +
                                                         shape_text(a) + " but logp= has shape " +
                                                         shape_text(logp)};
  return a;
}

evaluate_call checked_call(const spec& s, py::handle logp, py::handle ref, py::handle behavior,
                           py::handle mask, py::handle offsets, const py::object& tokens,
                           const py::object& sequences, const std::string& nonfinite,
                           py::handle value, py::handle coef) {
  evaluate_call c;
  c.s = &s;
  c.logp = array_argument(logp, "logp");
  const char kind = c.logp.dtype().kind();
  if (kind != 'f' || (c.logp.itemsize() != 4 && c.logp.itemsize() != 8))
    throw argument_error{PyExc_TypeError, accepted_floats("logp", c.logp)};
  const bool is_packed = !offsets.is_none();
  if (c.logp.ndim() != (is_packed ? 1 : 2))
    throw argument_error{
        exceptions().shape_error,
        "logp= has shape " + shape_text(c.logp) +
            (is_packed ? "; a packed batch (offsets= given) takes 1-D arrays of N tokens"
                       : "; a padded batch takes B x T arrays (pass offsets= for a packed "
                         "batch of 1-D arrays)")};
  c.ref = array_argument(ref, "ref");
  require_like_logp(c.ref, "ref", c.logp);
  c.has_behavior = !behavior.is_none();
  if (c.has_behavior) {
    c.behavior = array_argument(behavior, "behavior");
    require_like_logp(c.behavior, "behavior", c.logp);
  }
  if (!mask.is_none()) {
    c.mask = array_argument(mask, "mask");
    c.mask_type = mask_type_of(c.mask, c.logp);
  }
  c.packed = is_packed;
  if (is_packed) c.offsets = offsets_of(offsets);
  c.opt.counts.tokens = count_of(tokens, "tokens");
  c.opt.counts.sequences = count_of(sequences, "sequences");
  if (nonfinite != "raise" && nonfinite != "propagate")
    throw argument_error{PyExc_ValueError,
                         "nonfinite= must be \"raise\" or \"propagate\", got \"" + nonfinite + "\""};
  c.opt.nonfinite = nonfinite == "raise" ? nonfinite_policy::raise : nonfinite_policy::propagate;
  c.value = output_of(value, "value", c.logp);
  c.coef = output_of(coef, "coef", c.logp);
  return c;
}

summary run_checked(const evaluate_call& c) {
  const bool single = c.logp.itemsize() == 4;
  return c.packed ? (single ? evaluate_packed<float>(c) : evaluate_packed<double>(c))
                  : (single ? evaluate_padded<float>(c) : evaluate_padded<double>(c));
}

/// (value, coef, loss, kl, kl_sequence, tokens, sequences, guarded, dropped)
py::tuple evaluate_binding(const spec& s, py::handle logp, py::handle ref, py::handle behavior,
                           py::handle mask, py::handle offsets, const py::object& tokens,
                           const py::object& sequences, const std::string& nonfinite,
                           py::handle value, py::handle coef) {
  return translated([&] {
    const evaluate_call c = checked_call(s, logp, ref, behavior, mask, offsets, tokens,
                                         sequences, nonfinite, value, coef);
    const summary r = run_checked(c);
    return py::make_tuple(c.value, c.coef, r.loss, r.kl, r.kl_sequence, r.tokens, r.sequences,
                          r.guarded, r.dropped);
  });
}

/// The kernel's own time for a batch, for the benchmark (bench/python_bench.py): the least
/// wall time in seconds over `repeats` calls from C++, arguments checked once.
double kernel_seconds(const spec& s, py::handle logp, py::handle ref, py::handle mask,
                      int repeats) {
  return translated([&] {
    const py::object none = py::none();
    const evaluate_call c =
        checked_call(s, logp, ref, none, mask, none, none, none, "raise", none, none);
    double best = 1e300;
    for (int i = 0; i < repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run_checked(c);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                          start).count());
    }
    return best;
  });
}

}  // namespace

void bind_evaluate(py::module_& m) {
  m.def("evaluate", &evaluate_binding, py::arg("spec"), py::arg("logp"), py::arg("ref"),
        py::arg("behavior"), py::arg("mask"), py::arg("offsets"), py::arg("tokens"),
        py::arg("sequences"), py::arg("nonfinite"), py::arg("value"), py::arg("coef"),
        "The kernel behind klgrad.evaluate (see klgrad/__init__.py).");
  m.def("kernel_seconds", &kernel_seconds, py::arg("spec"), py::arg("logp"), py::arg("ref"),
        py::arg("mask"), py::arg("repeats"));
}

}  // namespace klgrad::python
