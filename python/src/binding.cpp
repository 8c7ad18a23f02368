// The arrays that cross by DLPack, their checks, and the translation of errors into the
// package's exceptions (binding.hpp).
#include "binding.hpp"

#include <string_view>
#include <utility>

namespace klgrad::python {

element element_of(const array& a) {
  using code = nb::dlpack::dtype_code;
  const auto t = a.dtype();
  if (t.lanes != 1) return element::other;
  switch (code(t.code)) {
    case code::Float:
      return t.bits == 16 ? element::f16 : t.bits == 32 ? element::f32
                                         : t.bits == 64 ? element::f64 : element::other;
    case code::Bfloat: return t.bits == 16 ? element::bf16 : element::other;
    case code::Int:
      return t.bits == 8 ? element::i8 : t.bits == 16 ? element::i16 : t.bits == 32 ? element::i32
                                       : t.bits == 64 ? element::i64 : element::other;
    case code::UInt:
      return t.bits == 8 ? element::u8 : t.bits == 16 ? element::u16 : t.bits == 32 ? element::u32
                                       : t.bits == 64 ? element::u64 : element::other;
    case code::Bool: return t.bits == 8 ? element::boolean : element::other;
    default: return element::other;
  }
}

std::string dtype_text(const array& a) {
  using code = nb::dlpack::dtype_code;
  const auto t = a.dtype();
  std::string name;
  switch (code(t.code)) {
    case code::Float: name = "float"; break;
    case code::Bfloat: name = "bfloat"; break;
    case code::Int: name = "int"; break;
    case code::UInt: name = "uint"; break;
    case code::Complex: name = "complex"; break;
    case code::Bool: return "bool";
    default: name = "dtype code " + std::to_string(int(t.code)) + " of "; break;
  }
  name += std::to_string(int(t.bits));
  if (t.lanes != 1) name += "x" + std::to_string(int(t.lanes));
  return name;
}

std::string shape_text(const array& a) {
  std::string out = "(";
  for (std::size_t d = 0; d < a.ndim(); ++d)
    out += (d ? ", " : "") + std::to_string(a.shape(d));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

namespace {

std::string class_name(nb::handle x) {
  return nb::cast<std::string>(nb::handle(reinterpret_cast<PyObject*>(Py_TYPE(x.ptr())))
                                   .attr("__name__"));
}

/// DLPack's device types by name, for a refusal.
std::string device_text(int type, int id) {
  const char* name = type == 2 ? "cuda" : type == 3 ? "cuda-host" : type == 4 ? "opencl"
                   : type == 7 ? "vulkan" : type == 8 ? "metal" : type == 10 ? "rocm"
                   : type == 14 ? "oneapi" : "non-CPU";
  return std::string(name) + ":" + std::to_string(id) + " (DLPack device type " +
         std::to_string(type) + ")";
}

void require_cpu(const array& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value)
    throw argument_error{python_error::type,
                         std::string(name) + "= is on device " +
                             device_text(a.device_type(), a.device_id()) +
                             "; klgrad's C++ kernel computes on the CPU (pass it with .cpu())"};
}

}  // namespace

array array_argument(nb::handle x, const char* name) {
  array a;
  if (!nb::try_cast(x, a, false))
    throw argument_error{python_error::type,
                         std::string(name) + "= must be an array (a torch tensor, a numpy array "
                                             "or any DLPack producer), got " + class_name(x)};
  require_cpu(a, name);
  return a;
}

writable_array output_argument(nb::handle x, const char* name) {
  writable_array a;
  if (!nb::try_cast(x, a, false)) {
    array_argument(x, name);  // refuses what is no array at all, or not on the CPU
    throw argument_error{python_error::value, std::string(name) +
                                                  "= is read-only; klgrad writes its results "
                                                  "into it"};
  }
  require_cpu(array(a), name);
  return a;
}

namespace {

/// The stride of dimension d, in elements, as klgrad can read it: non-negative.
Index element_stride(const array& a, std::size_t d, const char* name) {
  const std::int64_t s = a.stride(d);
  if (s < 0)
    throw argument_error{
        python_error::shape,
        std::string(name) + "= has a negative stride (" + std::to_string(s) +
            " elements along dimension " + std::to_string(d) +
            "); pass a contiguous array (numpy.ascontiguousarray / tensor.contiguous())"};
  return Index(s);
}

}  // namespace

Index row_stride(const array& a, const char* name, bool writable) {
  const Index rows = Index(a.shape(0)), cols = Index(a.shape(1));
  if (rows == 0 || cols == 0) return cols;  // nothing is read: any strides will do
  if (cols > 1 && element_stride(a, 1, name) != 1)
    throw argument_error{python_error::shape,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " with non-contiguous rows (element stride " +
                             std::to_string(a.stride(1)) +
                             "); klgrad reads each row in place: pass a row-contiguous array "
                             "(numpy.ascontiguousarray / tensor.contiguous())"};
  if (rows <= 1) return cols;
  const Index stride = element_stride(a, 0, name);
  if (writable && stride < cols)
    throw argument_error{python_error::shape,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " with overlapping rows (row stride " + std::to_string(stride) +
                             " elements); klgrad cannot write its results into it"};
  return stride;
}

void require_contiguous_vector(const array& a, const char* name, bool) {
  if (a.shape(0) > 1 && element_stride(a, 0, name) != 1)
    throw argument_error{python_error::shape,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " but is not contiguous (element stride " +
                             std::to_string(a.stride(0)) +
                             "); pass a contiguous array (numpy.ascontiguousarray / "
                             "tensor.contiguous())"};
}

void require_row_major(const array& a, const char* name) {
  std::int64_t expected = 1;
  for (std::size_t d = a.ndim(); d-- > 0;) {
    if (a.shape(d) > 1 && a.stride(d) != expected)
      throw argument_error{python_error::shape,
                           std::string(name) + "= has shape " + shape_text(a) +
                               " but is not contiguous; pass a contiguous array"};
    expected *= std::int64_t(a.shape(d));
  }
}

void require_shape(const array& a, const char* name, const array& like, const char* like_name) {
  bool same = a.ndim() == like.ndim();
  for (std::size_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == like.shape(d);
  if (!same)
    throw argument_error{python_error::shape, std::string(name) + "= has shape " +
                                                  shape_text(a) + " but " + like_name +
                                                  "= has shape " + shape_text(like)};
}

namespace {

/// The package's exception types (created once by bind_exceptions).
struct exception_types {
  PyObject* spec_error = nullptr;       ///< SpecError(ValueError)
  PyObject* shape_error = nullptr;      ///< ShapeError(ValueError)
  PyObject* input_error = nullptr;      ///< InputError(ValueError)
  PyObject* nonfinite_error = nullptr;  ///< NonFiniteError(InputError, FloatingPointError)
};

exception_types& exceptions() {
  static exception_types types;
  return types;
}

/// message with every `from` replaced by `to`.
std::string replaced(std::string message, std::string_view from, std::string_view to) {
  for (std::size_t at = message.find(from); at != std::string::npos;
       at = message.find(from, at + to.size()))
    message.replace(at, from.size(), to);
  return message;
}

/// The library's advice, which names C++ calls, in the words of the Python interface.
std::string python_words(std::string message) {
  constexpr std::pair<std::string_view, std::string_view> words[] = {
      {"pass nonfinite_policy::propagate", "pass nonfinite=\"propagate\""},
      {"jensen-shannon needs 0 < lambda < 1", "divergence=\"jensen-shannon\" needs 0 < lam < 1"},
      // logits/driver.hpp's check of the gradient's memory (grad= and grad_in_place=)
      {"grad overlaps z, whose 16-bit entries cannot hold the float gradient: pass a "
       "separate float grad",
       "grad= overlaps logits=, whose 16-bit entries cannot hold the float gradient: pass a "
       "separate float32 grad="},
      {"grad overlaps z's memory without being z itself",
       "grad= overlaps the memory of logits= without being logits= itself"},
      {" bytes from z's first entry, row stride ", " bytes from the first entry of logits=, "
                                                   "row stride "},
      {" against z's ", " against that of logits=, "},
      {"the gradient can be written over z in place, the same memory with the same layout",
       "the gradient can be written over logits= in place (grad_in_place=True), the same "
       "memory with the same layout"},
      {"grad overlaps z_ref's memory: the kernels read z_ref after writing grad; pass a grad "
       "apart from z_ref",
       "grad= overlaps the memory of ref_logits=: the kernels read ref_logits= after writing "
       "the gradient; pass a grad= apart from ref_logits="},
  };
  for (const auto& [from, to] : words) message = replaced(std::move(message), from, to);
  // The full-vocabulary kernels name their arrays z and z_ref at the start of a message.
  if (message.rfind("z_ref ", 0) == 0) message = "ref_logits" + message.substr(5);
  else if (message.rfind("z ", 0) == 0) message = "logits" + message.substr(1);
  return message;
}

/// An input_error in the words of the Python interface: from its fields where its reason
/// needs them, else python_words(what()).
std::string python_message(const input_error& e) {
  if (e.reason == input_reason::bad_count) {
    const std::string name = e.argument == "counts.tokens" ? "tokens" : "sequences";
    return detail::cat(name, "=", e.value, " is below this batch's own count, ", e.limit,
                       ": a global count covers every shard, this one included (None counts "
                       "the local batch)");
  }
  return python_words(e.what());
}

PyObject* python_type(python_error kind) {
  const exception_types& t = exceptions();
  switch (kind) {
    case python_error::type: return PyExc_TypeError;
    case python_error::value: return PyExc_ValueError;
    case python_error::shape: return t.shape_error;
    case python_error::input: break;
  }
  return t.input_error;
}

/// Sets the Python error for the C++ exception p, chosen by its type (and, for an
/// input_error, its reason).
void translate(const std::exception_ptr& p, void*) {
  const exception_types& t = exceptions();
  try {
    std::rethrow_exception(p);
  } catch (const argument_error& e) {
    PyErr_SetString(python_type(e.kind), e.message.c_str());
  } catch (const spec_error& e) {
    PyErr_SetString(t.spec_error, python_words(e.what()).c_str());
  } catch (const shape_error& e) {
    PyErr_SetString(t.shape_error, python_words(e.what()).c_str());
  } catch (const input_error& e) {
    PyErr_SetString(e.reason == input_reason::nonfinite ? t.nonfinite_error : t.input_error,
                    python_message(e).c_str());
  } catch (const error& e) {
    PyErr_SetString(t.input_error, python_words(e.what()).c_str());
  }
}

PyObject* new_exception(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("klgrad.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (!type) throw nb::python_error();
  m.attr(name) = nb::handle(type);
  return type;
}

}  // namespace

void bind_exceptions(nb::module_& m) {
  exception_types& t = exceptions();
  t.spec_error = new_exception(m, "SpecError", PyExc_ValueError,
                               "A spec string that does not parse; the message names the wrong "
                               "word and lists what is allowed.");
  t.shape_error = new_exception(m, "ShapeError", PyExc_ValueError,
                                "Arrays whose shapes or layouts do not fit together; the message "
                                "names the arguments and their shapes.");
  t.input_error = new_exception(m, "InputError", PyExc_ValueError,
                                "A value outside its domain; the message names the argument, "
                                "the index and the value.");
  const nb::tuple bases = nb::make_tuple(nb::handle(t.input_error),
                                         nb::handle(PyExc_FloatingPointError));
  t.nonfinite_error = new_exception(m, "NonFiniteError", bases.ptr(),
                                    "A NaN or infinite input in a valid (unmasked) token or row.");
  nb::register_exception_translator(translate);
}

}  // namespace klgrad::python
