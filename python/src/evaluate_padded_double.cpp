// klgrad.evaluate on padded double batches.
#include "evaluate_padded.hpp"

namespace klgrad::python {
template summary evaluate_padded<double>(const evaluate_call&);
}  // namespace klgrad::python
