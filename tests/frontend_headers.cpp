// Every header of the front end (frontend/klgrad_frontend) in one translation unit, built
// without CLI11 and yaml-cpp (tests/CMakeLists.txt): the headers must also fit together
// (one namespace klgrad::frontend, its detail beside klgrad::detail), as in the Python
// extension, which includes several of them. Each error type is a usage_error.
#include <klgrad_frontend/audit_json.hpp>
#include <klgrad_frontend/bench_json.hpp>
#include <klgrad_frontend/errors.hpp>
#include <klgrad_frontend/eval_json.hpp>
#include <klgrad_frontend/explain_json.hpp>
#include <klgrad_frontend/json_input.hpp>
#include <klgrad_frontend/policy_file.hpp>
#include <klgrad_frontend/trainer_config.hpp>
#include <klgrad_frontend/trainer_input.hpp>

#include <type_traits>

namespace klgrad::frontend {

static_assert(std::is_base_of_v<usage_error, json_error>);
static_assert(std::is_base_of_v<usage_error, schema_error>);
static_assert(std::is_base_of_v<usage_error, settings_error>);
static_assert(std::is_base_of_v<usage_error, batch_error>);
static_assert(std::is_base_of_v<usage_error, limit_error>);
static_assert(std::is_base_of_v<usage_error, trainer_error>);

}  // namespace klgrad::frontend
