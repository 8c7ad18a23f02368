// Deprecated forwarding header (kept for one release): use <klgrad/support/number_text.hpp>.
#pragma once

#include "support/number_text.hpp"
