// evaluate()'s kernels for the common float batch types, compiled once for klgrad's own
// programs (the tests and the tool), whose other files see them extern
// (KLGRAD_EXTERN_TEMPLATES; klgrad/instances.hpp says how a program of yours does the same).
#include <klgrad/instances.hpp>

KLGRAD_INSTANTIATE_EVALUATE(float)
