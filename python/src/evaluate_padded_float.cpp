// klgrad.evaluate on padded float batches.
#include "evaluate_padded.hpp"

namespace klgrad::python {
template summary evaluate_padded<float>(const evaluate_call&);
}  // namespace klgrad::python
