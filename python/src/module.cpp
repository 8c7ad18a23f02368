// The module klgrad._klgrad: the version, the exception types, Spec, and the functions of
// the other source files (evaluate.cpp, ...). The Python package (klgrad/) wraps it.
#include "binding.hpp"

#include <klgrad/spec.hpp>
#include <klgrad/version.hpp>

namespace klgrad::python {

void bind_evaluate(py::module_& m);
void bind_logits(py::module_& m);
void bind_tools(py::module_& m);

namespace {

PyObject* new_exception(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("klgrad.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

void bind_exceptions(py::module_& m) {
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
  const py::tuple bases = py::make_tuple(py::handle(t.input_error),
                                         py::handle(PyExc_FloatingPointError));
  t.nonfinite_error = new_exception(m, "NonFiniteError", bases.ptr(),
                                    "A NaN or infinite input in a valid (unmasked) token or row.");
}

spec parse(const std::string& text) {
  return translated([&] { return parse_spec(text); });
}

void bind_spec(py::module_& m) {
  py::class_<spec>(m, "Spec", "A parsed KL spec, e.g. Spec('k3-as-loss,preset=verl').")
      .def(py::init(&parse), py::arg("text"))
      .def("__str__", [](const spec& s) { return to_string(s); })
      .def("__repr__", [](const spec& s) { return "klgrad.Spec('" + to_string(s) + "')"; })
      .def("__eq__", [](const spec& a, const spec& b) { return a == b; }, py::is_operator())
      .def("__eq__", [](const spec&, const py::object&) { return false; })
      .def("__hash__", [](const spec& s) { return py::hash(py::str(to_string(s))); })
      .def("expand", [](const spec& s) { return expand(s); },
           "The same configuration with its preset written out as explicit keys.")
      .def_property_readonly("beta", [](const spec& s) { return s.beta; })
      .def(py::pickle([](const spec& s) { return to_string(s); },
                      [](const std::string& text) { return parse(text); }));
}

}  // namespace
}  // namespace klgrad::python

PYBIND11_MODULE(_klgrad, m) {
  using namespace klgrad::python;
  m.doc() = "klgrad's compiled core: thin bindings over the C++ headers.";
  m.attr("__version__") = klgrad::version_string;
  bind_exceptions(m);
  bind_spec(m);
  bind_evaluate(m);
  bind_logits(m);
  bind_tools(m);
}
