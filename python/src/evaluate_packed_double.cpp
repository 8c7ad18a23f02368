// klgrad.evaluate on packed double batches.
#include "evaluate_packed.hpp"

namespace klgrad::python {
template summary evaluate_packed<double>(const evaluate_call&);
}  // namespace klgrad::python
