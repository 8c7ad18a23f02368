// klgrad.evaluate on packed float batches.
#include "evaluate_packed.hpp"

namespace klgrad::python {
template summary evaluate_packed<float>(const evaluate_call&);
}  // namespace klgrad::python
