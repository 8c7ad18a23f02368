// What the extension's source files share: the arrays that cross by DLPack (torch tensors,
// numpy arrays, any DLPack producer), their checks in the words of the Python interface, the
// error that names a Python argument, and the row views the kernels read.
#pragma once

#include <klgrad/errors.hpp>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <Eigen/Core>
#include <cstdint>
#include <string>

namespace klgrad::python {

namespace nb = nanobind;
using Eigen::Index;

/// An array read in place: whatever crossed by DLPack or the buffer protocol, any dtype,
/// device and layout until the checks below accept it.
using array = nb::ndarray<nb::ro>;
/// An array the binding writes into (an output the caller allocated).
using writable_array = nb::ndarray<>;

/// The Python exception an argument_error becomes.
enum class python_error { type, value, shape, input };

/// An argument the binding itself refuses (type, dtype, device, ndim, strides), with a
/// message that names the Python argument.
struct argument_error {
  python_error kind;
  std::string message;
};

/// The element types the kernels read, as DLPack describes them.
enum class element { f16, bf16, f32, f64, i8, i16, i32, i64, u8, u16, u32, u64, boolean, other };
element element_of(const array& a);
/// "float32", "bfloat16", "int64", "bool", ...: the dtype in numpy's and torch's words.
std::string dtype_text(const array& a);
/// "(2, 3)", a Python shape.
std::string shape_text(const array& a);

/// The array argument `name` read in place, on the CPU, or a refusal naming it: TypeError
/// for what is not an array, ValueError for another device.
array array_argument(nb::handle x, const char* name);
/// The same for an output: also refuses a read-only array.
writable_array output_argument(nb::handle x, const char* name);

/// Rows of a 2-D array (B x T) with contiguous rows, as klgrad's row views take them: the
/// row stride in elements. Refuses other layouts naming the argument.
Index row_stride(const array& a, const char* name, bool writable = false);
/// Checks that a 1-D array is contiguous, naming the argument.
void require_contiguous_vector(const array& a, const char* name, bool writable = false);
/// Checks that a is row-major contiguous, whatever its shape, naming the argument.
void require_row_major(const array& a, const char* name);
/// Checks that a has exactly `shape`'s dimensions, naming both arguments.
void require_shape(const array& a, const char* name, const array& like, const char* like_name);

template <class S>
using rows_map = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                            Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using vector_map = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

template <class S>
const S* data_of(const array& a) {
  return static_cast<const S*>(a.data());
}
template <class S>
S* mutable_data_of(const array& a) {
  return const_cast<S*>(static_cast<const S*>(a.data()));
}

/// A row-major view of a checked 2-D array whose scalar is S (any dtype of S's size).
template <class S>
rows_map<S> rows_view(const array& a, const char* name, bool writable = false) {
  const Index stride = row_stride(a, name, writable);
  return rows_map<S>(data_of<S>(a), Index(a.shape(0)), Index(a.shape(1)),
                     Eigen::OuterStride<>(stride));
}

/// A view of a checked contiguous 1-D array whose scalar is S.
template <class S>
vector_map<S> vector_view(const array& a, const char* name, bool writable = false) {
  require_contiguous_vector(a, name, writable);
  return vector_map<S>(data_of<S>(a), Index(a.shape(0)));
}

/// Registers the translation of argument_error and the library's errors into the package's
/// exceptions (SpecError, ShapeError, InputError, NonFiniteError), chosen by the C++ error's
/// type and reason, never by its text.
void bind_exceptions(nb::module_& m);

}  // namespace klgrad::python
