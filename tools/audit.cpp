// klgrad audit: the exact expected gradient of a spec on a small tabular policy, compared
// with the exact gradients of the divergences it might be estimating.
#include "commands.hpp"

namespace klgrad::cli {

void add_audit(CLI::App& app) {
  app.add_subcommand("audit", "Exact audit of a spec on a tabular policy (work in progress)");
}

}  // namespace klgrad::cli
