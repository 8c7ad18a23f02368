// What the extension's source files share: the Python exception types, the one function that
// turns a C++ error into a Python exception, and the checked views of numpy arrays.
#pragma once

#include <klgrad/errors.hpp>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <Eigen/Core>
#include <string>

namespace klgrad::python {

namespace py = pybind11;
using Eigen::Index;

/// The Python exception types (created once by the module, see module.cpp).
struct exception_types {
  PyObject* spec_error = nullptr;       ///< SpecError(ValueError)
  PyObject* shape_error = nullptr;      ///< ShapeError(ValueError)
  PyObject* input_error = nullptr;      ///< InputError(ValueError)
  PyObject* nonfinite_error = nullptr;  ///< NonFiniteError(InputError, FloatingPointError)
};
exception_types& exceptions();

/// An error in an argument that the binding itself checks (type, dtype, ndim, strides),
/// raised as `kind` with a message that names the Python argument.
struct argument_error {
  PyObject* kind;
  std::string message;
};

[[noreturn]] void raise_python(PyObject* kind, const std::string& message);

/// A C++ error of the library as the Python exception a caller of this package expects, its
/// message in the words of the Python interface (keyword arguments, not C++ calls). The one
/// place where library errors are translated.
[[noreturn]] void raise_translated(const std::exception& e);

/// Runs f (usually with the GIL released inside it) and raises what it throws as Python
/// exceptions.
template <class F>
auto translated(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const argument_error& e) {
    raise_python(e.kind, e.message);
  } catch (const py::error_already_set&) {
    throw;
  } catch (const klgrad::error& e) {
    raise_translated(e);
  }
}

/// "(2, 3)", a Python shape.
std::string shape_text(const py::array& a);
/// "float32", a numpy dtype name.
std::string dtype_text(const py::array& a);

/// A numpy array argument, or a refusal naming it ("logp= must be a numpy array ...").
py::array array_argument(py::handle x, const char* name);

/// Rows of a 2-D array (B x T) with contiguous rows, as klgrad's row views take them: the
/// row stride in elements. Refuses other layouts naming the argument.
Index row_stride(const py::array& a, const char* name, bool writable);

/// Checks that a 1-D array is contiguous (stride of one element), naming the argument.
void require_contiguous_vector(const py::array& a, const char* name, bool writable);

template <class S>
using rows_map = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                            Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using vector_map = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

/// A row-major view of a checked 2-D array whose scalar is S (any dtype of S's size).
template <class S>
rows_map<S> rows_view(const py::array& a, const char* name, bool writable = false) {
  const Index stride = row_stride(a, name, writable);
  return rows_map<S>(static_cast<const S*>(a.data()), Index(a.shape(0)), Index(a.shape(1)),
                     Eigen::OuterStride<>(stride));
}

/// A view of a checked contiguous 1-D array whose scalar is S.
template <class S>
vector_map<S> vector_view(const py::array& a, const char* name, bool writable = false) {
  require_contiguous_vector(a, name, writable);
  return vector_map<S>(static_cast<const S*>(a.data()), Index(a.shape(0)));
}

}  // namespace klgrad::python
