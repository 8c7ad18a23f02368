// The klgrad program: evaluates, audits and reports on KL terms from the command line.
#include "commands.hpp"

#include <klgrad/version.hpp>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  CLI::App app{"klgrad: per-token KL values and gradient coefficients for RL trainers"};
  app.set_version_flag("--version", klgrad::version_string);
  app.require_subcommand(1);
  klgrad::cli::add_eval(app);
  klgrad::cli::add_audit(app);
  klgrad::cli::add_explain(app);
  klgrad::cli::add_report(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::cerr << "klgrad: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
