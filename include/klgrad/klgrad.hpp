// Umbrella header: everything klgrad offers.
#pragma once

#include "aggregation.hpp"
#include "batch.hpp"
#include "controllers.hpp"
#include "errors.hpp"
#include "estimators.hpp"
#include "evaluate.hpp"
#include "explain.hpp"
#include "importance.hpp"
#include "level.hpp"
#include "placement.hpp"
#include "returns.hpp"
#include "spec.hpp"
#include "version.hpp"
