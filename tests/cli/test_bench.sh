#!/usr/bin/env bash
# Tests of `klgrad bench` (issue 27): the JSON fields of tiny-budget runs (padded, packed,
# weighted, double, 16-bit logits, two threads) and the refusals, each with exit status 2 and
# the fragment of the message in the CLI's words. Nothing about speed is asserted: only what
# the run must report whatever the machine (counts, byte sizes derived below from the
# arrays each kernel reads and writes, quartiles in order, zero allocations where counted).
# Usage: test_bench.sh PATH/TO/klgrad
set -uo pipefail
klgrad=$1
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
tiny=(--seconds 0.01)

# fields JSON CHECK...: python3 asserts each CHECK (a Python expression over `out`, the
# parsed document, and `rows`, its rows) and prints the ones that fail.
fields() {
  local json=$1
  shift
  /usr/bin/python3 - "$json" "$@" <<'PY'
import json, sys
out = json.loads(sys.argv[1])
rows = out["rows"]
bad = [c for c in sys.argv[2:] if not eval(c)]
for c in bad:
    print("  not true:", c)
sys.exit(1 if bad else 0)
PY
}

# The quartiles of every row in order and positive; rounds at least the minimum (5).
sane='all(0 < r[k]["q1"] <= r[k]["median"] <= r[k]["q3"] for r in rows for k in ("items_per_second", "floor_items_per_second", "of_floor")) and all(r["rounds"] >= 5 for r in rows)'
# Where this build counts allocations (glibc, no sanitizer), the kernels make none.
no_allocations='all((r["allocations_per_call"] == 0) if out["allocations_counted"] else r["allocations_per_call"] is None for r in rows)'

# ---- padded float: bytes per token = logp, ref, value, coef (4 bytes each) + a mask byte
out=$("$klgrad" bench --spec k3-as-loss --spec as-loss,preset=verl,kl=low_var_kl --shape 4x64 "${tiny[@]}" --format json)
check "padded: exits 0" test $? -eq 0
check "padded: fields" fields "$out" \
  'out["command"] == "bench" and out["dtype"] == "float" and out["threads"] == 1' \
  '[r["kernel"] for r in rows] == ["k3-as-loss", "as-loss,preset=verl,kl=low_var_kl"]' \
  'all(r["kind"] == "spec" and r["unit"] == "tokens" and r["items"] == 256 for r in rows)' \
  'all(r["floor"] == "triad" and r["bytes_per_item"] == 17 for r in rows)' \
  'all(abs(r["floor_bytes_per_item"] - 17) <= 3 * 4 * 3 / 256 for r in rows)' \
  "$sane" "$no_allocations"
check "padded: this build counts allocations (glibc)" fields "$out" 'out["allocations_counted"]'
# The vectors each row ran on (the build's, fixed when it was compiled) and this CPU's widest,
# by name; bench_tests.cpp checks the names against Eigen's packets and the CPU.
isas='{"avx512", "avx2", "avx", "sse4", "sse2", "neon", "sve", "vsx", "altivec", "other", "none"}'
check "padded: vector sets" fields "$out" \
  "all(r['vector_isa'] in $isas and r['cpu_vector_isa'] in $isas | {'unknown'} for r in rows)"
vectors=$(/usr/bin/python3 -c 'import json, sys; r = json.loads(sys.argv[1])["rows"][0]; print(r["vector_isa"], r["cpu_vector_isa"])' "$out")
built=${vectors% *}
cpu=${vectors#* }

# ---- packed double, lengths cycled: no mask byte, 8-byte numbers (4 x 8)
out=$("$klgrad" bench --spec k1-in-reward --tokens 1000 --lengths 300,200 --dtype double "${tiny[@]}" --format json)
check "packed: exits 0" test $? -eq 0
check "packed: fields" fields "$out" 'rows[0]["items"] == 1000 and rows[0]["bytes_per_item"] == 32' \
  'rows[0]["dtype"] == "double"' "$sane" "$no_allocations"

# ---- a weighted spec reads behaviour log-probs too (5 x 4 + 1)
out=$("$klgrad" bench --spec k3-as-loss,is=detached --shape 2x100 "${tiny[@]}" --format json)
check "weighted: exits 0" test $? -eq 0
check "weighted: fields" fields "$out" 'rows[0]["bytes_per_item"] == 21' "$sane" "$no_allocations"

# ---- two threads: each over one of the 2 sequences; 3 threads for 2 sequences use 2
out=$("$klgrad" bench --spec k2-as-loss --shape 2x512 --threads 3 "${tiny[@]}" --format json)
check "threads: exits 0" test $? -eq 0
check "threads: fields" fields "$out" 'rows[0]["threads"] == 2 and rows[0]["items"] == 1024' \
  "$sane" "$no_allocations"

# ---- logits rows are split between threads whatever the sequences: 1 x 4 rows, 2 threads
out=$("$klgrad" bench --logits forward-kl --shape 1x4 --vocab 16 --threads 2 "${tiny[@]}" --format json)
check "logits threads: exits 0" test $? -eq 0
check "logits threads: fields" fields "$out" 'rows[0]["threads"] == 2 and rows[0]["items"] == 4' \
  "$sane" "$no_allocations"

# ---- logits, bf16: a row reads z and ref (2 x 64 x 2 bytes), writes a float gradient row and
# a value (65 x 4); the floor reads the logits (256)
out=$("$klgrad" bench --logits reverse-kl --logits jensen-shannon --shape 2x3 --vocab 64 --dtype bf16 "${tiny[@]}" --format json)
check "logits: exits 0" test $? -eq 0
check "logits: fields" fields "$out" \
  '[r["kernel"] for r in rows] == ["reverse-kl", "jensen-shannon"]' \
  'all(r["kind"] == "logits" and r["unit"] == "rows" and r["items"] == 6 for r in rows)' \
  'all(r["dtype"] == "bf16" and r["floor"] == "exp-sum" for r in rows)' \
  'all(r["bytes_per_item"] == 516 and r["floor_bytes_per_item"] == 256 for r in rows)' \
  "$sane" "$no_allocations"

# ---- the table: a header, one line per kernel, the note on reading the ratio
out=$("$klgrad" bench --spec k3-as-loss --shape 4x64 "${tiny[@]}")
check "table: exits 0" test $? -eq 0
check "table: header" contains "$out" "of floor       [q1, q3]  allocs rounds"
check "table: the row" contains "$out" "k3-as-loss (tokens)"
check "table: the batch" contains "$out" "4 x 64 padded tokens (90% valid), float, $built vectors, 1 thread(s)"
# A line says so where this CPU offers wider vectors than the build uses, and only there.
if [[ $cpu != "$built" && $cpu != unknown ]]; then
  check "table: wider vectors named" contains "$out" "note: this CPU offers $cpu vectors, which a build with -march=native uses"
else
  check "table: no note on vectors" test -z "$(grep -F 'note: this CPU offers' <<<"$out")"
fi
check "table: how to read it" contains "$out" "1 = as fast as this machine's floor"
check "table: no progress line off a terminal" test -z "$("$klgrad" bench --spec k1-in-reward --shape 1x8 "${tiny[@]}" 2>&1 >/dev/null)"

# ---- refusals --------------------------------------------------------------------------
refused() {  # refused NAME FRAGMENT ARGS...
  local name=$1 fragment=$2
  shift 2
  local err status
  err=$("$klgrad" bench "$@" 2>&1 >/dev/null)
  status=$?
  check "$name: exits 2" test "$status" -eq 2
  check "$name: says '$fragment'" contains "$err" "$fragment"
  if ! contains "$err" "$fragment"; then echo "  got: ${err:0:400}"; fi
}
refused "no kernel" "nothing to measure: give --spec S or --logits DIVERGENCE" --shape 2x2
refused "no batch" "no batch: give --shape BxT (padded) or --tokens N" --spec k1-in-reward
for bad in 64x 0x5 5x0 axb 64 x8 -1x5 64x8x2; do
  refused "bad shape $bad" "--shape must be BxT with whole numbers B, T > 0 (e.g. 64x8192), got '$bad'" --spec k1-in-reward --shape "$bad"
done
refused "shape and tokens" "--shape (a padded batch) and --tokens (a packed one) exclude each other" --spec k1-in-reward --shape 2x2 --tokens 4
refused "zero tokens" "--tokens must be > 0, got 0" --spec k1-in-reward --tokens 0
refused "negative tokens" "--tokens must be > 0, got -3" --spec k1-in-reward --tokens -3
refused "lengths without tokens" "--lengths describes a packed batch: give --tokens N with it" --spec k1-in-reward --shape 2x2 --lengths 2
refused "zero length" "--lengths must be > 0 each, got 0" --spec k1-in-reward --tokens 8 --lengths 4,0
refused "unknown spec" "spec 'k9-as-loss': unknown estimator 'k9'; allowed: k1|k2|k3|abs" --spec k9-as-loss --shape 2x2
refused "unknown divergence" "--logits 'kl': unknown divergence; one of reverse-kl, forward-kl, jensen-shannon" --logits kl --shape 2x2 --vocab 8
refused "logits without vocab" "--logits needs --vocab V > 0 (the logits per row), got 0" --logits reverse-kl --shape 2x2
refused "vocab without logits" "--vocab applies to --logits only" --spec k1-in-reward --shape 2x2 --vocab 8
refused "zero seconds" "--seconds must be a time budget > 0 per kernel, got 0" --spec k1-in-reward --shape 2x2 --seconds 0
refused "negative seconds" "--seconds must be a time budget > 0 per kernel, got -1" --spec k1-in-reward --shape 2x2 --seconds -1
refused "nan seconds" "--seconds must be a time budget > 0 per kernel, got nan" --spec k1-in-reward --shape 2x2 --seconds nan
refused "zero threads" "--threads must be >= 1, got 0" --spec k1-in-reward --shape 2x2 --threads 0
refused "bf16 sampled tokens" "--dtype bf16 applies to --logits only; sampled tokens (--spec) are float or double" --spec k1-in-reward --shape 2x2 --dtype bf16
refused "unknown dtype" "--dtype" --spec k1-in-reward --shape 2x2 --dtype half
refused "unknown format" "--format" --spec k1-in-reward --shape 2x2 --format csv
refused "a batch too large for memory" "out of memory: reverse-kl on this batch needs about" --logits reverse-kl --shape 100000x100000 --vocab 100000
finish
