#!/usr/bin/env bash
# Builds the klgrad program (gcc, Release, in build/) and runs `klgrad report` with this
# script's arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# CXX and CMAKE_BUILD_TYPE matter on the first configure; later runs reuse build/'s cache.
CXX=${CXX:-g++} cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKLGRAD_BUILD_TOOLS=ON \
  >/dev/null
cmake --build build --target klgrad_cli -j "${KLGRAD_JOBS:-2}"
help=$(build/tools/klgrad --help 2>&1 || true)
if ! grep -qE '^[[:space:]]+report([[:space:]]|$)' <<<"$help"; then
  echo "report.sh: this klgrad has no 'report' subcommand yet" >&2
  exit 2
fi
exec build/tools/klgrad report "$@"
