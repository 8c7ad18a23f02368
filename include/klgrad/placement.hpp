// Deprecated forwarding header (kept for one release): use <klgrad/core/terms.hpp>.
#pragma once

#include "core/terms.hpp"
