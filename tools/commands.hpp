// The subcommands of the klgrad program, each defined in its own source file, and the JSON
// helpers they share.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace klgrad::cli {

/// An error in the command's input: printed to stderr, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Reads JSON from a file, or from stdin when the path is empty or "-".
inline nlohmann::json read_json(const std::string& path) {
  std::string text;
  if (path.empty() || path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(path);
    if (!in) throw usage_error("cannot open '" + path + "'");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw usage_error("'" + (path.empty() ? std::string("-") : path) +
                      "' is not valid JSON: " + e.what());
  }
}

void add_eval(CLI::App& app);
void add_audit(CLI::App&);
void add_explain(CLI::App&);
void add_report(CLI::App&);

}  // namespace klgrad::cli
