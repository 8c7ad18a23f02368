# The check harness shared by the CLI test scripts (sourced): check NAME COMMAND... counts a
# pass or a failure, contains / lacks test a text for a fragment, finish prints the counts and
# gives the script's exit status. tmp is a scratch directory removed on exit.
failures=0 passes=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() {  # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then passes=$((passes + 1)); else failures=$((failures + 1)); echo "FAILED: $name"; fi
}
contains() { grep -qF -- "$2" <<<"$1"; }
lacks() { ! grep -qF -- "$2" <<<"$1"; }
finish() {
  echo "${passes} passed, ${failures} failed"
  test "$failures" -eq 0
}
