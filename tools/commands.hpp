// The subcommands of the klgrad program, each defined in its own source file; what they
// share with the Python extension (JSON readers, trainer configurations, their errors) is the
// front end in frontend/klgrad_frontend, which never sees CLI11.
#pragma once

#include <CLI/CLI.hpp>

namespace klgrad::cli {

void add_eval(CLI::App& app);
void add_audit(CLI::App&);
void add_explain(CLI::App&);
void add_report(CLI::App&);
void add_bench(CLI::App&);

}  // namespace klgrad::cli
