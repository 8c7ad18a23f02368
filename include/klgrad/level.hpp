// Deprecated forwarding header (kept for one release): use <klgrad/core/level.hpp>.
#pragma once

#include "core/level.hpp"
