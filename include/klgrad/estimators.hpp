// Deprecated forwarding header (kept for one release): use <klgrad/core/estimators.hpp>.
#pragma once

#include "core/estimators.hpp"
