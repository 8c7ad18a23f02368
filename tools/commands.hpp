// The subcommands of the klgrad program, each defined in its own source file, and the error
// they raise on bad input (json_input.hpp reads their JSON).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace klgrad::cli {

/// An error in the command's input: printed to stderr, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void add_eval(CLI::App& app);
void add_audit(CLI::App&);
void add_explain(CLI::App&);
void add_report(CLI::App&);

}  // namespace klgrad::cli
