// The Python exceptions, the translation of the library's errors, and the checked views of
// numpy arrays (binding.hpp).
#include "binding.hpp"

#include <string_view>
#include <utility>

namespace klgrad::python {

exception_types& exceptions() {
  static exception_types types;
  return types;
}

void raise_python(PyObject* kind, const std::string& message) {
  PyErr_SetString(kind, message.c_str());
  throw py::error_already_set();
}

namespace {

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
      {"add them with .with_behavior(lb)", "pass behavior= (the log-probs of the policy that "
                                           "sampled the tokens)"},
      {"jensen-shannon needs 0 < lambda < 1", "divergence=\"jensen-shannon\" needs 0 < lam < 1"},
  };
  for (const auto& [from, to] : words) message = replaced(std::move(message), from, to);
  // The full-vocabulary kernels name their arrays z and z_ref at the start of a message.
  if (message.rfind("z_ref ", 0) == 0) message = "ref_logits" + message.substr(5);
  else if (message.rfind("z ", 0) == 0) message = "logits" + message.substr(1);
  return message;
}

/// The message of e in the words of the Python interface: from the fields of a structured
/// input_error where its reason needs them, else python_words(what()).
std::string python_message(const std::exception& e) {
  const auto* input = dynamic_cast<const input_error*>(&e);
  if (input && input->reason == input_reason::bad_count) {
    const std::string name = input->argument == "counts.tokens" ? "tokens" : "sequences";
    return detail::cat(name, "=", input->value, " is below this batch's own count, ",
                       input->limit, ": a global count covers every shard, this one included "
                       "(None counts the local batch)");
  }
  return python_words(e.what());
}

}  // namespace

void raise_translated(const std::exception& e) {
  const exception_types& types = exceptions();
  const std::string message = python_message(e);
  if (dynamic_cast<const spec_error*>(&e)) raise_python(types.spec_error, message);
  if (dynamic_cast<const shape_error*>(&e)) raise_python(types.shape_error, message);
  const auto* input = dynamic_cast<const input_error*>(&e);
  if ((input && input->reason == input_reason::nonfinite) ||
      message.find("not finite") != std::string::npos ||
      message.find("must be finite") != std::string::npos)
    raise_python(types.nonfinite_error, message);
  raise_python(types.input_error, message);
}

std::string shape_text(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    out += (d ? ", " : "") + std::to_string(a.shape(d));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_text(const py::array& a) { return py::str(a.dtype()); }

py::array array_argument(py::handle x, const char* name) {
  if (!py::isinstance<py::array>(x))
    throw argument_error{PyExc_TypeError,
                         std::string(name) + "= must be a numpy array or a torch CPU tensor, got " +
                             std::string(py::str(py::type::handle_of(x).attr("__name__")))};
  return py::reinterpret_borrow<py::array>(x);
}

namespace {

void require_writable(const py::array& a, const char* name, bool writable) {
  if (writable && !a.writeable())
    throw argument_error{PyExc_ValueError, std::string(name) + "= is read-only; klgrad writes "
                                                               "its results into it"};
}

/// The byte stride of dimension d as a whole number of elements, or a refusal.
Index element_stride(const py::array& a, py::ssize_t d, const char* name) {
  const py::ssize_t bytes = a.strides(d), item = a.itemsize();
  if (bytes < 0 || bytes % item != 0)
    throw argument_error{
        exceptions().shape_error,
        std::string(name) + "= has strides (in bytes) that klgrad cannot read in place (" +
            std::to_string(bytes) + " along dimension " + std::to_string(d) +
            "); pass a row-contiguous array (numpy.ascontiguousarray / tensor.contiguous())"};
  return Index(bytes / item);
}

}  // namespace

Index row_stride(const py::array& a, const char* name, bool writable) {
  require_writable(a, name, writable);
  const Index rows = Index(a.shape(0)), cols = Index(a.shape(1));
  if (cols > 1 && element_stride(a, 1, name) != 1)
    throw argument_error{exceptions().shape_error,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " with non-contiguous rows (element stride " +
                             std::to_string(a.strides(1) / a.itemsize()) +
                             "); klgrad reads each row in place: pass a row-contiguous array "
                             "(numpy.ascontiguousarray / tensor.contiguous())"};
  if (rows <= 1) return cols;
  const Index stride = element_stride(a, 0, name);
  if (writable && stride < cols)
    throw argument_error{exceptions().shape_error,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " with overlapping rows (row stride " + std::to_string(stride) +
                             " elements); klgrad cannot write its results into it"};
  return stride;
}

void require_contiguous_vector(const py::array& a, const char* name, bool writable) {
  require_writable(a, name, writable);
  if (a.shape(0) > 1 && element_stride(a, 0, name) != 1)
    throw argument_error{exceptions().shape_error,
                         std::string(name) + "= has shape " + shape_text(a) +
                             " but is not contiguous (element stride " +
                             std::to_string(a.strides(0) / a.itemsize()) +
                             "); pass a contiguous array (numpy.ascontiguousarray / "
                             "tensor.contiguous())"};
}

}  // namespace klgrad::python
