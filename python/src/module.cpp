// The module klgrad._klgrad: the version, the exception types, the enums (built from the C++
// tables of names), Spec, and the functions of the other source files (evaluate.cpp,
// plan.cpp, ...).
// The Python package (klgrad/) wraps it.
#include "binding.hpp"

#include <klgrad/logits.hpp>
#include <klgrad/spec.hpp>
#include <klgrad/version.hpp>


#include <cctype>

namespace klgrad::python {

void bind_evaluate(nb::module_& m);
void bind_logits(nb::module_& m);
void bind_tools(nb::module_& m);
void bind_plan(nb::module_& m);
void bind_bench(nb::module_& m);

namespace {

/// "in-reward" -> "IN_REWARD": a spec word as a Python enum member's name.
std::string member_name(std::string_view word) {
  std::string out;
  for (const char ch : word) out += ch == '-' ? '_' : char(std::toupper((unsigned char)ch));
  return out;
}

/// The Python enum `name` (a str Enum: members compare equal to their spec words) of the
/// C++ table `all`, added to the module.
template <class Table>
nb::object make_enum(nb::module_& m, const char* name, const Table& all, const char* doc) {
  nb::list members;
  for (const auto e : all)
    members.append(nb::make_tuple(member_name(to_string(e)), std::string(to_string(e))));
  const nb::object enum_type = nb::module_::import_("enum").attr("Enum");
  nb::object type = enum_type(name, members, nb::arg("module") = "klgrad",
                              nb::arg("type") = nb::module_::import_("builtins").attr("str"));
  type.attr("__doc__") = doc;
  type.attr("__str__") = nb::module_::import_("builtins").attr("str").attr("__str__");
  m.attr(name) = type;
  return type;
}

/// The enums Spec's attributes return.
struct enum_types {
  nb::object estimator, placement, weighting, weight_level, level, aggregation, preset;
};

enum_types& enums() {
  static enum_types* types = new enum_types();  // never destroyed: lives as long as Python
  return *types;
}

void bind_enums(nb::module_& m) {
  enum_types& t = enums();
  t.estimator = make_enum(m, "Estimator", all_estimators,
                          "A per-token KL estimator: k1 = -log r, k2 = (log r)^2 / 2, "
                          "k3 = r - 1 - log r, abs = |log r| (r = ref / pi).");
  t.placement = make_enum(m, "Placement", all_placements,
                          "Where the KL term goes: in the reward (detached), as a loss, or both.");
  t.weighting = make_enum(m, "Weighting", all_weightings,
                          "Importance weights pi / mu: none, detached or differentiable.");
  t.weight_level = make_enum(m, "WeightLevel", all_weight_levels,
                             "The level of the importance weight (token, prefix, ...).");
  t.level = make_enum(m, "Level", all_levels, "The level of the KL: token, to-go or sequence.");
  t.aggregation = make_enum(m, "Aggregation", all_aggregations,
                            "How per-token losses are aggregated into the batch loss.");
  t.preset = make_enum(m, "Preset", all_presets,
                       "A trainer whose clamps, weights and aggregation a spec takes.");
  nb::list divergences;
  for (const divergence d : all_divergences) divergences.append(std::string(to_string(d)));
  for (const top_k_form f : top_k_forms) divergences.append(std::string(to_string(f)));
  m.attr("divergences") = nb::tuple(divergences);
}

template <class Enum>
nb::object member(const nb::object& type, Enum e) {
  return type(std::string(to_string(e)));
}

void bind_spec(nb::module_& m) {
  nb::class_<spec>(m, "Spec",
                   "A parsed KL spec, e.g. Spec('k3-as-loss,preset=verl'); its parts are "
                   "attributes (estimator, placement, weighting, ...).")
      .def("__init__", [](spec* s, const std::string& text) { new (s) spec(parse_spec(text)); },
           nb::arg("text"))
      .def("__str__", [](const spec& s) { return to_string(s); })
      .def("__repr__", [](const spec& s) { return "klgrad.Spec('" + to_string(s) + "')"; })
      .def("__eq__", [](const spec& a, const spec& b) { return a == b; }, nb::is_operator())
      .def("__eq__", [](const spec&, nb::handle) { return false; }, nb::is_operator())
      .def("__hash__", [](const spec& s) { return nb::hash(nb::str(to_string(s).c_str())); })
      .def("expand", [](const spec& s) { return expand(s); },
           "The same configuration with its preset written out as explicit keys.")
      .def_prop_ro("estimator",
                   [](const spec& s) { return member(enums().estimator, s.term.value_estimator); },
                   "The estimator whose value the term logs (k1, k2, k3, abs).")
      .def_prop_ro("gradient_estimator",
                   [](const spec& s) {
                     return member(enums().estimator, s.term.gradient_estimator);
                   },
                   "The estimator whose gradient the term follows (differs from estimator "
                   "only for a straight-through a~b).")
      .def_prop_ro("placement",
                   [](const spec& s) { return member(enums().placement, s.term.where); })
      .def_prop_ro("weighting",
                   [](const spec& s) { return member(enums().weighting, s.importance.mode); },
                   "The importance weighting (is=).")
      .def_prop_ro("weight_level",
                   [](const spec& s) { return member(enums().weight_level, s.importance.level); },
                   "The importance weight's level (is-level=).")
      .def_prop_ro("level", [](const spec& s) { return member(enums().level, s.level); })
      .def_prop_ro("gamma", [](const spec& s) { return s.gamma; })
      .def_prop_ro("aggregation",
                   [](const spec& s) { return member(enums().aggregation, s.aggregation); })
      .def_prop_ro("clamp",
                   [](const spec& s) { return detail::format_clamp(s.clamp); },
                   "The clamp in the spec grammar's words (none, or items joined by /).")
      .def_prop_ro("preset",
                   [](const spec& s) {
                     return s.preset == preset::none ? nb::none()
                                                     : member(enums().preset, s.preset);
                   },
                   "The trainer preset, or None.")
      .def_prop_ro("beta", [](const spec& s) { return s.beta; })
      .def("__getstate__", [](const spec& s) { return to_string(s); })
      .def("__setstate__",
           [](spec* s, const std::string& text) { new (s) spec(parse_spec(text)); });
}

}  // namespace
}  // namespace klgrad::python

NB_MODULE(_klgrad, m) {
  using namespace klgrad::python;
  m.doc() = "klgrad's compiled core: thin bindings over the C++ headers.";
  m.attr("__version__") = klgrad::version_string;
  bind_exceptions(m);
  bind_enums(m);
  bind_spec(m);
  bind_evaluate(m);
  bind_logits(m);
  bind_tools(m);
  bind_plan(m);
  bind_bench(m);
}
