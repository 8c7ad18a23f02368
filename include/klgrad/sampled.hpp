// Deprecated forwarding header (kept for one release): use <klgrad/logits/sampled.hpp>.
#pragma once

#include "logits/sampled.hpp"
