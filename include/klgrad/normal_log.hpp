// Deprecated forwarding header (kept for one release): use <klgrad/logits/normal_log.hpp>.
#pragma once

#include "logits/normal_log.hpp"
