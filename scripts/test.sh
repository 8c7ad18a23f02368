#!/usr/bin/env bash
# klgrad's CI: installs missing packages, then
#   (i)   gcc, Release, warnings as errors: build everything, run every test
#   (ii)  clang++-14, warnings as errors: build everything, run every test
#   (iii) the fuzz smoke (scripts/fuzz.sh, build-fuzz): every libFuzzer target for
#         KLGRAD_FUZZ_SECONDS (default 30) over a copy of its corpus
#   (iv)  gcc with ASan + UBSan at -O1 -g1 (-O1 is the sanitizers' documented level and
#         compiles in half the time of -O2 under instrumentation; -g1 gives the line tables
#         the stack traces need without full debug information for every Eigen template):
#         the library's unit tests (the build tests,
#         header self-containment check, tools and examples, done by (i) and (ii), skipped
#         to keep CI well inside its 90 minutes on two cores)
#   (v)   the Python package: a wheel built with build isolation and installed into
#         build-ci-python/venv (torch 2.13 from PyPI's CPU file) by scripts/python.sh, then
#         pytest python/tests in that venv
# each in its own build directory (build-ci-gcc, build-ci-clang, build-fuzz, build-ci-asan,
# build-ci-python).
# KLGRAD_CI_QUICK=1 runs only (i). KLGRAD_CI_JOBS sets the parallelism (default 2).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${KLGRAD_CI_JOBS:-2}

bash scripts/setup.sh
# The venv the Python-driven CTest tests and stage (v) use (torch 2.13, numpy, pytest).
python_venv="$root/build-ci-python/venv"
bash scripts/python_env.sh "$python_venv"

summaries=()

# run_config NAME BUILD_DIR CTEST_ARGS -- CMAKE_ARGS...
run_config() {
  local name=$1 dir=$2 ctest_args=$3
  shift 4
  echo "=== ${name}: configure ${dir}"
  cmake -S "$root" -B "$root/$dir" -G Ninja -DKLGRAD_WERROR=ON "$@"
  echo "=== ${name}: build"
  cmake --build "$root/$dir" -j "$jobs"
  echo "=== ${name}: test"
  local log="$root/$dir/ctest.log" rc=0
  # shellcheck disable=SC2086
  (cd "$root/$dir" && ctest --output-on-failure -j "$jobs" $ctest_args) 2>&1 | tee "$log" ||
    rc=$?
  summaries+=("${name}: $(grep -E '^[0-9]+% tests passed' "$log" || echo 'no ctest summary')")
  if [[ $rc -ne 0 ]]; then
    echo "=== ${name}: FAILED" >&2
    exit "$rc"
  fi
}

print_summary() {
  echo "=== summary"
  local s
  for s in "${summaries[@]}"; do echo "$s"; done
}
trap print_summary EXIT

run_config "gcc Release" build-ci-gcc "" -- \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ "-DKLGRAD_TEST_PYTHON=$python_venv/bin/python"

if [[ "${KLGRAD_CI_QUICK:-0}" == 1 ]]; then
  exit 0
fi

run_config "clang-14 Release" build-ci-clang "" -- \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++-14 \
  "-DKLGRAD_TEST_PYTHON=$python_venv/bin/python"

echo "=== fuzz smoke"
if ! bash scripts/fuzz.sh "${KLGRAD_FUZZ_SECONDS:-30}"; then
  echo "=== fuzz smoke: FAILED" >&2
  exit 1
fi
summaries+=("fuzz smoke: no finding in ${KLGRAD_FUZZ_SECONDS:-30} s per target")

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run_config "gcc ASan+UBSan" build-ci-asan "-LE build" -- \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
  -DCMAKE_CXX_COMPILER=g++ -DKLGRAD_SANITIZE=ON \
  -DKLGRAD_CHECK_HEADERS=OFF -DKLGRAD_BUILD_EXAMPLES=OFF -DKLGRAD_BUILD_TOOLS=OFF

# (v) The Python package (python/): installed into a venv exactly as the README says
# (scripts/python.sh), then its pytest suite in that venv. pytest's exit code 5 (no test
# collected) fails the stage like any other non-zero code.
echo "=== python: install (scripts/python.sh build-ci-python/venv)"
bash scripts/python.sh "$python_venv"
# Runs pytest on one test folder with the venv's python, records its exit code in the
# summary and stops on a failure. $1: its name in the summary, $2: the folder; assignments
# written before the call reach pytest's environment.
run_pytest() {
  local name=$1 folder=$2 rc=0
  "$root/build-ci-python/venv/bin/python" -m pytest -q -p no:cacheprovider "$folder" || rc=$?
  summaries+=("${name}: pytest exit code ${rc}")
  if [[ $rc -ne 0 ]]; then
    echo "=== ${name}: FAILED (pytest exit code ${rc}; 5 means no test ran)" >&2
    exit 1
  fi
}
echo "=== python: test"
KLGRAD="$root/build-ci-gcc/tools/klgrad" run_pytest python python/tests
# The Triton kernels, in a pytest process of their own: its conftest sets TRITON_INTERPRET=1
# before triton is imported, so they run on the CPU (docs/logits.md, "The GPU path").
echo "=== python: Triton kernels under TRITON_INTERPRET=1 (python/tests_triton)"
run_pytest "python (Triton interpreter)" python/tests_triton
