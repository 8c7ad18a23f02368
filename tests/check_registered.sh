#!/usr/bin/env bash
# Every Catch test case of the given programs is a CTest test of its own. catch_discover_tests
# hands CTest the names as a CMake list, where an unbalanced '[' in one name swallows every
# name after it (a test named "... in [0.5, 2) ..." once hid 64 tests while CTest still
# reported 100% passed).
# Usage: check_registered.sh CTEST_COMMAND BUILD_DIR PROGRAM...
set -euo pipefail
ctest=$1 build=$2
shift 2
registered=$(cd "$build" && "$ctest" -N | sed -n 's/^ *Test *#[0-9]*: //p')
missing=0 total=0
for program in "$@"; do
  while IFS= read -r name; do
    [ -n "$name" ] || continue
    total=$((total + 1))
    if ! grep -Fxq -- "$name" <<<"$registered"; then
      echo "not registered with CTest: '$name' ($(basename "$program"))"
      missing=$((missing + 1))
    fi
  done < <("$program" --list-test-names-only)
done
echo "$((total - missing)) of $total test cases registered"
[ "$missing" -eq 0 ]
