#!/usr/bin/env bash
# Fuzz smoke: builds every libFuzzer target of fuzz/ (clang++-14, ASan + UBSan, in
# build-fuzz/) and runs each for a bounded time over a copy of its seed corpus
# fuzz/corpus/<target>/ (the committed corpus never grows here), with its dictionary
# fuzz/<target without fuzz_>.dict if there is one. Fails on any finding (crash, sanitizer
# report, timeout, out-of-memory), printing the reproducer's path. docs/fuzzing.md says how
# to run the targets for hours.
#   bash scripts/fuzz.sh [SECONDS [TARGET...]]   SECONDS per target (default 30), all targets
# KLGRAD_CI_JOBS targets run at once (default 2), each on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-30}
shift $(($# > 0 ? 1 : 0))
jobs=${KLGRAD_CI_JOBS:-2}
dir=$root/build-fuzz

# -O1 with line tables only: libFuzzer's usual level, symbolised reports, and a build that
# stays short (the JSON targets instantiate every kernel); assertions stay on (no NDEBUG).
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
echo "=== fuzz: configure and build ${dir}"
cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE= "-DCMAKE_CXX_FLAGS=-O1 -gline-tables-only" \
  -DCMAKE_CXX_COMPILER=clang++-14 "${launcher[@]}" -DKLGRAD_WERROR=ON -DKLGRAD_BUILD_FUZZERS=ON \
  -DKLGRAD_BUILD_TESTS=OFF -DKLGRAD_BUILD_TOOLS=OFF -DKLGRAD_BUILD_EXAMPLES=OFF \
  -DKLGRAD_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$dir" -j "$jobs"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for source in "$root"/fuzz/fuzz_*.cpp; do
    name=$(basename "$source" .cpp)
    targets+=("$name")
  done
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
work=$dir/smoke
rm -rf "$work"

# run TARGET: one bounded run in $work/TARGET (corpus copy, log, findings); writes its exit
# status to $work/TARGET/rc.
run() {
  local t=$1 out=$work/$1
  mkdir -p "$out/corpus"
  if [[ -d $root/fuzz/corpus/$t ]]; then cp -r "$root/fuzz/corpus/$t/." "$out/corpus/"; fi
  local args=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$out/")
  local dict=$root/fuzz/${t#fuzz_}.dict
  [[ -f $dict ]] && args+=(-dict="$dict")
  local rc=0
  "$dir/fuzz/$t" "${args[@]}" "$out/corpus" >"$out/log" 2>&1 || rc=$?
  echo "$rc" >"$out/rc"
}

echo "=== fuzz: ${#targets[@]} targets, ${seconds} s each, ${jobs} at a time"
running=0
for t in "${targets[@]}"; do
  [[ -x $dir/fuzz/$t ]] || { echo "fuzz: no target $t in $dir/fuzz" >&2; exit 2; }
  run "$t" &
  running=$((running + 1))
  if [[ $running -ge $jobs ]]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=0
for t in "${targets[@]}"; do
  out=$work/$t
  rc=$(cat "$out/rc" 2>/dev/null || echo missing)
  runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$out/log" | grep -o '[0-9]*$' || true)
  cov=$(grep -ao '^#[0-9]*[[:space:]]*DONE .*' "$out/log" | grep -o 'cov: [0-9]*' || true)
  if [[ $rc == 0 ]]; then
    echo "fuzz: $t: ${runs:-?} runs, ${cov:-cov: ?}, no finding"
  else
    failed=1
    echo "fuzz: $t: FAILED (exit status $rc); log $out/log" >&2
    grep -a -B2 -A25 -m1 'ERROR: \|fuzz_[a-z_]*: \|runtime error' "$out/log" | head -40 >&2 || true
    for f in "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-* "$out"/slow-unit-*; do
      [[ -e $f ]] && echo "fuzz: reproducer: $f  (replay: $dir/fuzz/$t $f)" >&2
    done
  fi
done
exit "$failed"
