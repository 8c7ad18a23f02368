// Deprecated forwarding header (kept for one release): use <klgrad/core/clamp.hpp>.
#pragma once

#include "core/clamp.hpp"
