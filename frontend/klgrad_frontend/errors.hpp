// The errors of the front end (JSON input, trainer configurations), one type per kind of
// refusal so that a caller chooses its reaction by type, never by the message: the CLI prints
// any of them and exits with status 2; a binding maps each type to an exception of its own.
// The library's own errors (klgrad::spec_error for a spec text, klgrad::input_error and
// shape_error that the front end does not rephrase) pass through unchanged.
#pragma once

#include <klgrad/errors.hpp>

#include <stdexcept>
#include <string>

namespace klgrad::frontend {

/// Base of every refusal of the front end: the input or the call's settings are wrong, and
/// what() says how in the input's own words (its keys, indices and values).
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Text that is not JSON the readers accept: a syntax error, nesting deeper than
/// max_json_depth, a key given twice in an object, a number outside the double range.
struct json_error : usage_error {
  using usage_error::usage_error;
};

/// A JSON document that parses but is not the input it should be (docs/api.md,
/// docs/logits.md, the policy file of docs/audit.md): not an object, an unknown or missing
/// key, a value of the wrong type, a list of the wrong length, a value out of its range.
struct schema_error : usage_error {
  using usage_error::usage_error;
};

/// The call's settings (command-line options, keyword arguments), alone or together with the
/// kind of input: e.g. --type bf16 for log-probability input, no --spec where one is needed.
struct settings_error : usage_error {
  using usage_error::usage_error;
};

/// The library refused the input's values (a klgrad::input_error: a non-finite entry where a
/// finite one is needed, a row without a finite logit, ...), rephrased with the input's keys
/// and indices; `reason` is the library's.
struct batch_error : usage_error {
  input_reason reason = input_reason::other;

  batch_error(const std::string& message, input_reason why)
      : usage_error(message), reason(why) {}
};

/// The work the input asks for is over a limit: the memory limit of an audit (--max-memory,
/// max_memory=), the number of outcomes an enumeration visits.
struct limit_error : usage_error {
  using usage_error::usage_error;
};

/// A trainer's configuration that the trainer would refuse or klgrad cannot read: an unknown
/// trainer, a key's value, two keys that contradict each other, a malformed --set or command
/// line. The message names the key and the value.
struct trainer_error : usage_error {
  using usage_error::usage_error;
};

}  // namespace klgrad::frontend
