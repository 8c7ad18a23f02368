// klgrad._klgrad.device_plan: the kernel's plan of a spec (kernel/plan.hpp, make_plan) as a
// dict, so that the device path (klgrad/device.py) reads every resolved decision, bound and
// constant from the C++ tables instead of writing a name or a number again.
#include "binding.hpp"

#include <klgrad/evaluate.hpp>
#include <klgrad/spec.hpp>

namespace klgrad::python {
namespace {

/// Each pass's name, as device.py dispatches on it.
std::string pass_name(detail::sequence_pass p) {
  switch (p) {
    case detail::sequence_pass::fused: return "fused";
    case detail::sequence_pass::token: return "token";
    case detail::sequence_pass::after_weight: return "after_weight";
    case detail::sequence_pass::per_decision: return "per_decision";
    case detail::sequence_pass::prefix: return "prefix";
    case detail::sequence_pass::sequence_mean: return "sequence_mean";
    case detail::sequence_pass::to_go: return "to_go";
    case detail::sequence_pass::sequence: break;
  }
  return "sequence";
}

/// k3's series (estimators.hpp: the radius below which k3 is its Taylor series, and the
/// series' coefficients rounded to T), for the device path's k3.
template <class T>
nb::dict k3_series_of() {
  nb::list coefficients;
  for (const T c : detail::k3_coefficient_table<T>.c) coefficients.append(double(c));
  nb::dict d;
  d["radius"] = detail::k3_series_radius;
  d["coefficients"] = coefficients;
  return d;
}

/// The plan of spec s for scalar T, resolved for its estimators, as a dict.
template <class T>
nb::dict plan_of(const spec& s) {
  return visit(s.term.value_estimator, [&](auto a) {
    return visit(s.term.gradient_estimator, [&](auto b) {
      // Planned as for a batch with behaviour log-probs: where a batch has none, device.py
      // decides as the kernel's behavior_source_for() does, from behavior_is_logp below.
      const detail::plan<T> p =
          detail::make_plan<decltype(a), decltype(b), T>(s, options{}, /*batch_has_behavior=*/true);
      const clamp_policy& c = p.clamp;
      nb::dict d;
      d["pass"] = pass_name(p.pass);
      d["weighted"] = p.weighted;
      d["gamma"] = double(p.gamma);
      d["lowest"] = double(p.lowest);
      d["highest"] = double(p.highest);
      d["clamp_value"] = p.clamp_value;
      d["clamp_gradient"] = p.clamp_gradient;
      d["log_lo"] = c.log_lo;
      d["log_hi"] = c.log_hi;
      d["value_lo"] = c.value_lo;
      d["value_hi"] = c.value_hi;
      d["after_weight"] = c.after_weight;
      d["pass_gradient"] = c.pass_gradient;
      d["detach"] = p.detach;
      d["log_bound"] = double(p.log_bound);
      d["clip"] = double(p.clip);
      d["log_clip"] = double(p.log_clip);
      d["weight_log_lo"] = double(p.log_lo);
      d["weight_log_hi"] = double(p.log_hi);
      d["norm"] = p.constants.norm;
      d["eps"] = p.constants.eps;
      d["seq_eps"] = p.constants.seq_eps;
      d["scale"] = p.constants.scale;
      d["uses_batch_count"] = uses_batch_count(s.aggregation);
      d["uses_sequence_count"] = uses_sequence_count(s.aggregation);
      d["behavior_is_logp"] = behavior_defaults_to_logp(s.preset);
      d["k3"] = k3_series_of<T>();
      return d;
    });
  });
}

nb::dict device_plan(const spec& s, const std::string& dtype) {
  if (dtype == "float32") return plan_of<float>(s);
  if (dtype == "float64") return plan_of<double>(s);
  throw argument_error{python_error::type,
                       "device_plan: dtype must be \"float32\" or \"float64\", got \"" + dtype +
                           "\""};
}

}  // namespace

void bind_plan(nb::module_& m) {
  m.def("device_plan", &device_plan, nb::arg("spec"), nb::arg("dtype"),
        "The kernel's plan of a spec for float32 or float64 (kernel/plan.hpp) as a dict: the "
        "pass, the guard's bounds, the clamp, the weights' limits, the aggregation "
        "constants. klgrad.device reads it.");
}

}  // namespace klgrad::python
