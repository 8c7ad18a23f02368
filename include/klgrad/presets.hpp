// Deprecated forwarding header (kept for one release): use <klgrad/spec/presets.hpp>.
#pragma once

#include "spec/presets.hpp"
