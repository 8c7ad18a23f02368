// The klgrad program: evaluates, audits, explains, reports on and benchmarks KL terms from the
// command line.
#include "commands.hpp"

#include <klgrad/version.hpp>

#include <exception>
#include <iostream>
#include <cstddef>
#include <new>
#include <string>

namespace {

/// Memory held back for the way out of an exhausted heap: destructors that allocate while
/// an exception unwinds (nlohmann's json frees a large document through a heap stack, in a
/// noexcept destructor) would otherwise terminate the program. The first failed allocation
/// releases it and throws std::bad_alloc, which main reports; the unwinding then has room.
char* emergency_reserve = nullptr;

void release_reserve() {
  delete[] emergency_reserve;
  emergency_reserve = nullptr;
  std::set_new_handler(nullptr);
  throw std::bad_alloc();
}

/// The first argument when it names no subcommand (CLI11 would say only that it was not
/// expected), else empty.
std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return "";
  for (const CLI::App* sub : app.get_subcommands({}))
    if (sub->check_name(argv[1])) return "";
  return argv[1];
}

/// "eval, audit, ...": the subcommands, in the order they were added.
std::string command_names(const CLI::App& app) {
  std::string names;
  for (const CLI::App* sub : app.get_subcommands({}))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

}  // namespace

int main(int argc, char** argv) {
  emergency_reserve = new char[std::size_t(16) << 20];
  std::set_new_handler(release_reserve);
  CLI::App app{"klgrad: per-token KL values and gradient coefficients for RL trainers"};
  app.set_version_flag("--version", klgrad::version_string);
  app.require_subcommand(1);
  klgrad::cli::add_eval(app);
  klgrad::cli::add_audit(app);
  klgrad::cli::add_explain(app);
  klgrad::cli::add_report(app);
  klgrad::cli::add_bench(app);
  // Every failure is a message and status 2, never an uncaught exception.
  try {
    const std::string unknown = unknown_command(app, argc, argv);
    if (!unknown.empty()) {
      std::cerr << "klgrad: unknown command '" << unknown << "'; commands: "
                << command_names(app) << " (klgrad --help)\n";
      return 2;
    }
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "klgrad: out of memory\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "klgrad: " << e.what() << "\n";
    return 2;
  } catch (...) {
    std::cerr << "klgrad: unexpected error\n";
    return 2;
  }
  return 0;
}
