// The file of `klgrad explain --trainer NAME --config FILE` as the trainer's keys: YAML or
// JSON (yaml-cpp, linked by the tool only) for the trainers configured by a mapping, the text
// of a command line for the others.
#pragma once

#include <klgrad_frontend/errors.hpp>
#include <klgrad_frontend/trainer_config.hpp>
#include <klgrad_frontend/trainer_input.hpp>

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace klgrad::cli {

/// A YAML node as dotted keys (the mapping front end's YAML twin of flatten(json)).
inline void flatten(const YAML::Node& node, const std::string& prefix, frontend::config_map& out) {
  if (node.IsMap()) {
    for (const auto& item : node)
      flatten(item.second, prefix.empty() ? item.first.as<std::string>()
                                          : prefix + "." + item.first.as<std::string>(),
              out);
  } else if (!prefix.empty()) {
    if (node.IsNull()) out[prefix] = "null";
    else if (node.IsScalar()) out[prefix] = node.Scalar();
    else out[prefix] = YAML::Dump(node);
  }
}

/// The keys of trainer t's configuration file at path.
inline frontend::config_map read_config_file(const frontend::trainer_info& t,
                                             const std::string& path,
                                             std::vector<std::string>& warnings) {
  std::ifstream in(path);
  if (!in) throw frontend::trainer_error("--config '" + path + "': cannot open the file");
  std::stringstream text;
  text << in.rdbuf();
  if (t.command_line)
    return frontend::read_command_line(frontend::split_command_line(text.str()), warnings);
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    throw frontend::trainer_error("--config '" + path + "': not YAML or JSON: " + e.what());
  }
  if (!root.IsMap() && !root.IsNull())
    throw frontend::trainer_error("--config '" + path + "': " + std::string(t.name) +
                                  "'s configuration is a mapping of its keys (YAML or JSON)");
  frontend::config_map out;
  flatten(root, "", out);
  return out;
}

}  // namespace klgrad::cli
