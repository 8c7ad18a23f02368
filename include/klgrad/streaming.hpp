// Deprecated forwarding header (kept for one release): use <klgrad/logits/streaming.hpp>.
#pragma once

#include "logits/streaming.hpp"
