// Deprecated forwarding header (kept for one release): use <klgrad/core/adapter.hpp>.
#pragma once

#include "core/adapter.hpp"
