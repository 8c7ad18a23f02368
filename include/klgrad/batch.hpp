// Deprecated forwarding header (kept for one release): use <klgrad/views/batch.hpp>.
#pragma once

#include "views/batch.hpp"
