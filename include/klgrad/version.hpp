// The library's version, as macros and as constants.
#pragma once

#define KLGRAD_VERSION_MAJOR 0
#define KLGRAD_VERSION_MINOR 1
#define KLGRAD_VERSION_PATCH 0
#define KLGRAD_VERSION_STRING "0.1.0"

namespace klgrad {
inline constexpr int version_major = KLGRAD_VERSION_MAJOR;
inline constexpr int version_minor = KLGRAD_VERSION_MINOR;
inline constexpr int version_patch = KLGRAD_VERSION_PATCH;
inline constexpr const char* version_string = KLGRAD_VERSION_STRING;
}  // namespace klgrad
