// explain() and audit(): the JSON texts of `klgrad explain` and `klgrad audit`, built by the
// CLI's own code (tools/explain_json.hpp, tools/audit_report.hpp); the package turns them
// into dicts.
#include "binding.hpp"

#include "audit_report.hpp"
#include "explain_json.hpp"

namespace klgrad::python {
namespace {

std::string explain_text(const spec& s) {
  return translated([&] { return cli::to_json(explain(s)).dump(); });
}

std::string audit_text(const std::string& policy, const spec& s, const std::string& sampling,
                       Index mc, std::uint64_t seed) {
  return translated([&] {
    if (sampling != "policy" && sampling != "behavior")
      throw argument_error{PyExc_ValueError, "sampling= must be \"policy\" or \"behavior\", got \"" +
                                                 sampling + "\""};
    if (mc < 0 || mc == 1)
      throw argument_error{PyExc_ValueError, "mc= must be None or at least 2 (Monte Carlo "
                                             "samples; a standard error needs 2), got " +
                                                 std::to_string(mc)};
    try {
      return cli::audit_report(s, nlohmann::json::parse(policy), sampling, mc, seed).dump();
    } catch (const cli::usage_error& e) {
      throw argument_error{exceptions().input_error, std::string("policy: ") + e.what()};
    } catch (const nlohmann::json::exception& e) {
      throw argument_error{exceptions().input_error, std::string("policy: ") + e.what()};
    }
  });
}

}  // namespace

void bind_tools(py::module_& m) {
  m.def("explain", &explain_text, py::arg("spec"));
  m.def("audit", &audit_text, py::arg("policy"), py::arg("spec"), py::arg("sampling"),
        py::arg("mc"), py::arg("seed"));
}

}  // namespace klgrad::python
