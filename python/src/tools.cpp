// explain(), audit() and from_trainer_config(): the JSON texts of `klgrad explain` and
// `klgrad audit`, built by the front-end library the CLI uses too (frontend/klgrad_frontend);
// the package turns them into dicts.
#include "binding.hpp"

#include <klgrad_frontend/audit_json.hpp>
#include <klgrad_frontend/explain_json.hpp>
#include <klgrad_frontend/trainer_config.hpp>


namespace klgrad::python {
namespace {

std::string explain_text(const spec& s) { return frontend::to_json(explain(s)).dump(); }

std::string audit_text(const std::string& policy, const spec& s, const std::string& sampling,
                       Index mc, std::uint64_t seed, std::uint64_t max_memory) {
  if (sampling != "policy" && sampling != "behavior")
    throw argument_error{python_error::value,
                         "sampling= must be \"policy\" or \"behavior\", got \"" + sampling + "\""};
  if (mc < 0 || mc == 1)
    throw argument_error{python_error::value, "mc= must be None or at least 2 (Monte Carlo "
                                              "samples; a standard error needs 2), got " +
                                                  std::to_string(mc)};
  try {
    frontend::audit_input::settings cfg;
    cfg.sampling = sampling;
    cfg.mc = mc;
    cfg.seed = seed;
    cfg.max_memory = max_memory;
    cfg.memory_option = "max_memory=";
    nlohmann::json doc;
    frontend::parse_json(policy, "policy", doc);
    return frontend::audit_input::audit(s, doc, cfg).dump();
  } catch (const frontend::usage_error& e) {
    throw argument_error{python_error::input, std::string("policy: ") + e.what()};
  }
}

/// klgrad.from_trainer_config: `form` says what `text` holds: "mapping" (the JSON of a
/// nested dict), "argv" (the JSON of a list of words) or "command_line" (a str).
std::string trainer_config_text(const std::string& name, const std::string& form,
                                const std::string& text) {
  try {
    const frontend::trainer_info& info = frontend::find_trainer(name);
    std::vector<std::string> notes;
    frontend::config_map keys;
    if (form == "mapping") {
      if (info.command_line)
        throw frontend::trainer_error(name + " is configured by a command line: pass mapping= as "
                                        "a list of its words or a str");
      frontend::flatten(nlohmann::json::parse(text), "", keys);
    } else {
      if (!info.command_line)
        throw frontend::trainer_error(name + " is configured by a mapping: pass mapping= as a dict "
                                        "(its YAML or JSON as loaded)");
      const auto words = form == "argv"
                             ? nlohmann::json::parse(text).get<std::vector<std::string>>()
                             : frontend::split_command_line(text);
      keys = frontend::read_command_line(words, notes);
    }
    return frontend::to_json(frontend::read_trainer_config(name, keys, {}, notes)).dump();
  } catch (const frontend::trainer_error& e) {
    throw argument_error{python_error::value, std::string("from_trainer_config: ") + e.what()};
  } catch (const nlohmann::json::exception& e) {  // the wrapper's own JSON of a mapping
    throw argument_error{python_error::value, std::string("from_trainer_config: ") + e.what()};
  }
}

}  // namespace

void bind_tools(nb::module_& m) {
  m.def("explain", &explain_text, nb::arg("spec"));
  m.def("from_trainer_config", &trainer_config_text, nb::arg("name"), nb::arg("form"),
        nb::arg("text"));
  m.def("audit", &audit_text, nb::arg("policy"), nb::arg("spec"), nb::arg("sampling"),
        nb::arg("mc"), nb::arg("seed"), nb::arg("max_memory"));
}

}  // namespace klgrad::python
