// Deprecated forwarding header (kept for one release): use <klgrad/core/importance.hpp>.
#pragma once

#include "core/importance.hpp"
