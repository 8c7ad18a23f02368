// Deprecated forwarding header (kept for one release): use <klgrad/kernel/evaluate_options.hpp>.
#pragma once

#include "kernel/evaluate_options.hpp"
