// Deprecated forwarding header (kept for one release): use <klgrad/support/scalars.hpp>.
#pragma once

#include "support/scalars.hpp"
