// klgrad.evaluate's arguments checked in the words of the Python interface, then handed to
// the kernel for their scalar type and layout (evaluate.hpp).
#include "evaluate.hpp"

#include <algorithm>
#include <chrono>

namespace klgrad::python {
namespace {

/// A float array of logp's dtype and ndim, or a refusal naming both.
void require_like_logp(const array& a, const char* name, const array& logp) {
  if (a.dtype() != logp.dtype())
    throw argument_error{python_error::type, std::string(name) + "= has dtype " + dtype_text(a) +
                                                 " but logp= has dtype " + dtype_text(logp) +
                                                 "; pass them in one dtype (float32 or float64)"};
  if (a.ndim() != logp.ndim())
    throw argument_error{python_error::shape, std::string(name) + "= has shape " +
                                                  shape_text(a) + " but logp= has shape " +
                                                  shape_text(logp)};
}

mask_kind mask_type_of(const array& mask, const array& logp) {
  if (mask.ndim() != logp.ndim())
    throw argument_error{python_error::shape, "mask= has shape " + shape_text(mask) +
                                                  " but logp= has shape " + shape_text(logp)};
  switch (element_of(mask)) {
    case element::boolean: case element::u8: case element::i8: return mask_kind::u8;
    case element::i32: case element::u32: return mask_kind::i32;
    case element::i64: case element::u64: return mask_kind::i64;
    case element::f32: return mask_kind::f32;
    case element::f64: return mask_kind::f64;
    default: break;
  }
  throw argument_error{python_error::type,
                       "mask= has dtype " + dtype_text(mask) +
                           "; the kernel reads bool, 8-, 32- or 64-bit integer, float32 or "
                           "float64 masks (nonzero = valid; klgrad.evaluate converts others)"};
}

/// offsets: contiguous int64, 1-D (B + 1 entries; klgrad.evaluate converts other integers).
array offsets_of(nb::handle x) {
  array a = array_argument(x, "offsets");
  if (a.ndim() != 1)
    throw argument_error{python_error::shape,
                         "offsets= has shape " + shape_text(a) +
                             "; offsets of a packed batch are 1-D (B + 1 entries)"};
  if (element_of(a) != element::i64)
    throw argument_error{python_error::type, "offsets= has dtype " + dtype_text(a) +
                                                 "; offsets are int64"};
  return a;
}

/// A global count (tokens=, sequences=): None (count the local batch) or a positive int.
Index count_of(nb::handle x, const char* name) {
  if (x.is_none()) return -1;
  const bool is_int = PyLong_Check(x.ptr()) && !PyBool_Check(x.ptr());
  long long n = 0;
  if (is_int) {
    int overflow = 0;
    n = PyLong_AsLongLongAndOverflow(x.ptr(), &overflow);
    if (overflow) n = 0;
  }
  if (n < 1)
    throw argument_error{python_error::value,
                         std::string(name) + "= must be a positive int (the count over every "
                                             "shard of a data-parallel batch) or None, got " +
                             nb::cast<std::string>(nb::repr(x))};
  return Index(n);
}

/// An output array: logp's dtype and shape, writable.
array output_of(nb::handle x, const char* name, const array& logp) {
  const array a(output_argument(x, name));
  require_like_logp(a, name, logp);
  require_shape(a, name, logp, "logp");
  return a;
}

evaluate_call checked_call(const spec& s, nb::handle logp, nb::handle ref, nb::handle behavior,
                           nb::handle mask, nb::handle offsets, nb::handle tokens,
                           nb::handle sequences, const std::string& nonfinite, nb::handle value,
                           nb::handle coef) {
  evaluate_call c;
  c.s = &s;
  c.logp = array_argument(logp, "logp");
  const element e = element_of(c.logp);
  if (e != element::f32 && e != element::f64)
    throw argument_error{python_error::type,
                         "logp= has dtype " + dtype_text(c.logp) +
                             "; klgrad computes in float32 or float64 (cast bfloat16/float16 "
                             "log-probs with .float() first)"};
  const bool is_packed = !offsets.is_none();
  if (c.logp.ndim() != (is_packed ? 1u : 2u))
    throw argument_error{
        python_error::shape,
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
    throw argument_error{python_error::value,
                         "nonfinite= must be \"raise\" or \"propagate\", got \"" + nonfinite + "\""};
  c.opt.nonfinite = nonfinite == "raise" ? nonfinite_policy::raise : nonfinite_policy::propagate;
  c.value = output_of(value, "value", c.logp);
  c.coef = output_of(coef, "coef", c.logp);
  return c;
}

summary run_checked(const evaluate_call& c) {
  const bool single = element_of(c.logp) == element::f32;
  try {
    return c.packed ? (single ? evaluate_packed<float>(c) : evaluate_packed<double>(c))
                    : (single ? evaluate_padded<float>(c) : evaluate_padded<double>(c));
  } catch (const input_error& e) {
    if (e.reason != input_reason::missing_behavior) throw;
    // The kernel says what is missing (its reason and argument); the words are Python's.
    throw argument_error{python_error::input,
                         detail::cat("spec '", to_string(*c.s), "' weights tokens by pi/mu "
                                     "(is=", to_string(c.s->importance.mode), ") but the "
                                     "batch has no behavior log-probs; pass behavior= (the "
                                     "log-probs of the policy that sampled the tokens)")};
  }
}

/// (loss, kl, kl_sequence, tokens, sequences, guarded, dropped); value and coef written.
nb::tuple evaluate_binding(const spec& s, nb::handle logp, nb::handle ref, nb::handle behavior,
                           nb::handle mask, nb::handle offsets, nb::handle tokens,
                           nb::handle sequences, const std::string& nonfinite, nb::handle value,
                           nb::handle coef) {
  const evaluate_call c = checked_call(s, logp, ref, behavior, mask, offsets, tokens, sequences,
                                       nonfinite, value, coef);
  const summary r = run_checked(c);
  return nb::make_tuple(r.loss, r.kl, r.kl_sequence, r.tokens, r.sequences, r.guarded,
                        r.dropped);
}

/// The kernel's own time for a batch, for the benchmark (bench/python_bench.py): the least
/// wall time in seconds over `repeats` calls from C++, arguments checked once.
double kernel_seconds(const spec& s, nb::handle logp, nb::handle ref, nb::handle mask,
                      nb::handle value, nb::handle coef, int repeats) {
  const nb::handle none = nb::none();
  const evaluate_call c =
      checked_call(s, logp, ref, none, mask, none, none, none, "raise", value, coef);
  double best = 1e300;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run_checked(c);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                        start).count());
  }
  return best;
}

}  // namespace

void bind_evaluate(nb::module_& m) {
  m.def("evaluate", &evaluate_binding, nb::arg("spec"), nb::arg("logp"), nb::arg("ref"),
        nb::arg("behavior").none(), nb::arg("mask").none(), nb::arg("offsets").none(),
        nb::arg("tokens").none(), nb::arg("sequences").none(), nb::arg("nonfinite"),
        nb::arg("value").none(), nb::arg("coef").none(),
        "The kernel behind klgrad.evaluate (see klgrad/__init__.py): writes value and coef.");
  m.def("kernel_seconds", &kernel_seconds, nb::arg("spec"), nb::arg("logp"), nb::arg("ref"),
        nb::arg("mask").none(), nb::arg("value"), nb::arg("coef"), nb::arg("repeats"));
}

}  // namespace klgrad::python
