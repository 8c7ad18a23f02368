// Deprecated forwarding header (kept for one release): use <klgrad/spec/spec.hpp>.
#pragma once

#include "spec/spec.hpp"
