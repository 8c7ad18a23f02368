// Deprecated forwarding header (kept for one release): use <klgrad/support/errors.hpp>.
#pragma once

#include "support/errors.hpp"
