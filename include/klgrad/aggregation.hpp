// Deprecated forwarding header (kept for one release): use <klgrad/core/aggregation.hpp>.
#pragma once

#include "core/aggregation.hpp"
