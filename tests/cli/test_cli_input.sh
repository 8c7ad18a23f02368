#!/usr/bin/env bash
# Tests of the klgrad program's handling of bad JSON input and bad command lines (issue 13,
# items 5, 7, 8): each case expects exit status 2 and the exact fragment of the message that
# names the field, the index and the value in the CLI's words (JSON keys, command-line
# options), never a crash, a library's raw text or a C++ call. Usage: test_cli_input.sh
# PATH/TO/klgrad.
set -uo pipefail
klgrad=$1
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
# refused NAME FRAGMENT ARGS... : stdin from $input; exit status 2 and FRAGMENT in stderr.
refused() {
  local name=$1 fragment=$2
  shift 2
  local err status
  err=$("$klgrad" "$@" <<<"$input" 2>&1 >/dev/null)
  status=$?
  check "$name: exits 2" test "$status" -eq 2
  check "$name: says '$fragment'" contains "$err" "$fragment"
  if ! contains "$err" "$fragment"; then echo "  got: ${err:0:400}"; fi
  last_err=$err
}
eval_k1=(eval --spec k1-in-reward,agg=token-sum)

# ---- deep nesting: a clear error, not a stack overflow --------------------------------
deep=$(/usr/bin/python3 -c 'print("[" * 100000 + "]" * 100000)')
input="{\"logp\":$deep,\"ref\":[[0]]}"
refused "deeply nested logp" "is nested deeper than 32 levels" "${eval_k1[@]}"
check "deeply nested logp: names the field" contains "$last_err" "'-': logp[0][0]"
input="{\"logits\":$deep,\"ref_logits\":[[0]]}"
refused "deeply nested logits" "is nested deeper than 32 levels" eval
input="{\"vocab\":2,\"steps\":1,\"logits\":$deep}"
refused "deeply nested policy file" "is nested deeper than 32 levels" audit --policy - --spec k1-in-reward
input=$(/usr/bin/python3 -c 'print("{\"a\":" * 50000 + "1" + "}" * 50000)')
refused "deeply nested objects" "is nested deeper than 32 levels" "${eval_k1[@]}"

# ---- unknown and duplicate keys --------------------------------------------------------
input='{"logp":[[-1,-2]],"ref":[[-1,-1]],"masks":[[1,0]]}'
refused "a masks typo" "logp/ref input has an unknown key 'masks' (did you mean 'mask'?); keys: logp, ref, behavior, mask, offsets" "${eval_k1[@]}"
input='{"logp":[[-1,-2]],"ref":[[-1,-1]],"behaviour":[[-1,-1]]}'
refused "a behaviour key" "unknown key 'behaviour' (did you mean 'behavior'?)" "${eval_k1[@]}"
input='{"logp":[[-1]],"ref":[[-1]],"xyzzy":1}'
refused "an unrelated key" "unknown key 'xyzzy'; keys: logp" "${eval_k1[@]}"
input='{"logits":[[0,1]],"ref_logits":[[1,0]],"divergense":"forward-kl"}'
refused "a logits key typo" "logits input has an unknown key 'divergense' (did you mean 'divergence'?)" eval
input='{"vocab":2,"steps":1,"logits":[[0,1]],"ref_logit":[[1,0]]}'
refused "a policy file key typo" "the policy file has an unknown key 'ref_logit' (did you mean 'ref_logits'?)" audit --policy - --spec k1-in-reward
input='{"logp":[[-1]],"ref":[[-1]],"logp":[[-2]]}'
refused "a duplicate key" "'-': key 'logp' is given twice" "${eval_k1[@]}"
input='{"logits":[[0,1]],"ref_logits":[[1,0]],"ref_logits":[[0,0]]}'
refused "a duplicate logits key" "key 'ref_logits' is given twice" eval
input='{"vocab":2,"vocab":3,"steps":1,"logits":[[0,1]],"ref_logits":[[1,0]]}'
refused "a duplicate policy file key" "key 'vocab' is given twice" audit --policy - --spec k1-in-reward
long_key=$(printf 'k%.0s' $(seq 100000))
input="{\"$long_key\":1,\"$long_key\":2}"
refused "a long duplicate key" "is given twice" "${eval_k1[@]}"
check "a long duplicate key: the message is short" test "${#last_err}" -lt 300
input="{\"$long_key\":1}"
refused "a long unknown key" "unknown key 'kkk" "${eval_k1[@]}"
check "a long unknown key: the message is short" test "${#last_err}" -lt 300

# ---- masks: null refused, booleans are 1 and 0 -----------------------------------------
input='{"logp":[[-1,-2]],"ref":[[-1,-1]],"mask":[[1,null]]}'
refused "a null mask entry" "mask[0][1] is null; a mask entry is 1 or true (valid), 0 or false (masked)" "${eval_k1[@]}"
input='{"logp":[-1,-2],"ref":[-1,-1],"offsets":[0,2],"mask":[null,1]}'
refused "a null packed mask entry" "mask[0] is null" "${eval_k1[@]}"
input='{"logits":[[0,1],[1,0]],"ref_logits":[[1,0],[0,1]],"mask":[1,null]}'
refused "a null logits mask entry" "mask[1] is null" eval
# The same batch with the 1/0 mask is the reference (tests/cli/test_cli.sh checks it).
input='{"logp":[[-2,-2]],"ref":[[-1,-1]],"mask":[[true,false]]}'
out=$("$klgrad" "${eval_k1[@]}" <<<"$input")
check "a boolean mask: exits 0" test $? -eq 0
want=$("$klgrad" "${eval_k1[@]}" <<<"${input/true,false/1,0}")
check "a boolean mask: the output of the 1/0 mask" test "$out" = "$want"
check "a boolean mask: one valid token" contains "$out" '"tokens":1'
check "a boolean mask: the masked token's coefficient is 0" contains "$out" '"coef":[[-1.0,0.0]]'
out=$(echo '{"logits":[[0,1],[1,0]],"ref_logits":[[0,1],[0,1]],"mask":[true,false]}' | "$klgrad" eval)
check "a boolean logits mask: one row" contains "$out" '"rows":1'

# ---- numbers outside the range ---------------------------------------------------------
input='{"logp":[[-1,1e999]],"ref":[[-1,-1]]}'
refused "1e999" "'-': logp[0][1] is 1e999, outside the range of a double" "${eval_k1[@]}"
input='{"logp":[[-1,-2]],"ref":[[-1,-1]],"mask":[[1,-1e400]]}'
refused "-1e400 in a mask" "mask[0][1] is -1e400, outside the range of a double" "${eval_k1[@]}"
input='{"logits":[[0,1]],"ref_logits":[[1,1e999]]}'
refused "1e999 in ref_logits" "ref_logits[0][1] is 1e999" eval
input='{"vocab":1e999,"steps":1}'
refused "1e999 in a policy file" "vocab is 1e999, outside the range" audit --policy - --spec k1-in-reward
# Beyond float's range a number reads as -inf / inf: refused in a valid token, unread in a
# masked one.
input='{"logp":[[-1,-1e300]],"ref":[[-1,-1]]}'
refused "-1e300 in float" "logp[0][1] is \"-inf\", not finite, in a valid token" "${eval_k1[@]}" --type float
out=$("$klgrad" "${eval_k1[@]}" --type float <<<'{"logp":[[-1,-1e300]],"ref":[[-1,-1]],"mask":[[1,0]]}')
check "-1e300 in float, masked: exits 0" test $? -eq 0

# ---- lengths claimed by the first rows: checked before memory is taken -----------------
# The first row claims 200000 entries and there are 200000 rows: 4e10 doubles were reserved.
/usr/bin/python3 -c '
n = 200000
print("{\"logp\":[[" + ",".join(["0"] * n) + "]" + ",[0]" * (n - 1) + "],\"ref\":[[0]]}")' >"$tmp/claims.json"
input=""
refused "rows shorter than the first" "logp[1] has 1 entry but logp[0] has 200000" "${eval_k1[@]}" "$tmp/claims.json"
/usr/bin/python3 -c '
n = 200000
print("{\"logits\":[[" + ",".join(["0"] * n) + "]" + ",[0]" * (n - 1) + "],\"ref_logits\":[]}")' >"$tmp/claims.json"
refused "logits rows shorter than the first" "logits[1] has 1 entry but logits[0] has 200000" eval "$tmp/claims.json"

# ---- paths and commands ----------------------------------------------------------------
refused "a directory" "'$tmp' is a directory, not a JSON file" "${eval_k1[@]}" "$tmp"
refused "a missing file" "cannot open '$tmp/none.json': No such file or directory" "${eval_k1[@]}" "$tmp/none.json"
refused "a policy directory" "'$tmp' is a directory, not a JSON file" audit --policy "$tmp" --spec k1-in-reward
refused "an unknown command" "klgrad: unknown command 'evl'; commands: eval, audit, explain, report" evl
input='[1,2]'
refused "a list, not an object" "the input must hold a JSON object, got [1,2]" "${eval_k1[@]}"

# ---- no input crashes: out of memory is a message too ----------------------------------
/usr/bin/python3 -c '
n = 1000000
row = "[" + ",".join(["-1"] * n) + "]"
print("{\"logp\":" + "[" + row + "]" + ",\"ref\":[" + row + "]}")' >"$tmp/big.json"
err=$( (ulimit -v 60000; "$klgrad" "${eval_k1[@]}" "$tmp/big.json") 2>&1 >/dev/null)
status=$?
check "out of memory: exits 2" test "$status" -eq 2
check "out of memory: says so" contains "$err" "klgrad: out of memory"

# ---- audit memory: refused before allocating, with the need and the limit --------------
input='{"vocab":1024,"steps":2,"logits":[],"ref_logits":[]}'
# need = V^T (2 x parameters + 6 T + 3) x 8 bytes, parameters = (1 + V) V.
need=$(awk 'BEGIN { printf "%.0f", 1024 * 1024 * (2 * 1025 * 1024 + 15) * 8 }')
refused "audit V = 1024, T = 2" "vocab 1024, steps 2: enumerating its 1048576 outcomes needs 16 TiB ($need bytes), over --max-memory 1 GiB (1073741824 bytes)" audit --policy - --spec k1-in-reward
input='{"vocab":2,"steps":1,"logits":[[0.3,-0.2]],"ref_logits":[[0.0,0.5]]}'
# V = 2, T = 1: 2 outcomes x (2 x 2 + 6 + 3) x 8 = 208 bytes.
refused "audit over --max-memory 100" "needs 208 bytes, over --max-memory 100 bytes" audit --policy - --spec k2-as-loss --max-memory 100
out=$("$klgrad" audit --policy - --spec k2-as-loss --max-memory 1K <<<"$input")
check "audit within --max-memory 1K: exits 0" test $? -eq 0
check "audit within --max-memory 1K: follows rkl" contains "$out" '"follows":"rkl"'
# --mc 10: one batch of 10 samples, 10 x 13 x 8 + 2 x 2 x 8 = 1072 bytes.
refused "audit --mc over --max-memory" "--mc 10 needs 1.05 KiB (1072 bytes), over --max-memory 1 KiB" audit --policy - --spec k2-as-loss --max-memory 1K --mc 10

# ---- the library's errors in the CLI's words -------------------------------------------
input='{"logp":[[-1,null]],"ref":[[-1,-1]]}'
refused "NaN logp" "logp[0][1] is null (NaN), not finite, in a valid token; set mask[0][1] to 0, or pass --nonfinite propagate to compute anyway" "${eval_k1[@]}"
check "NaN logp: no C++ name" lacks "$last_err" "nonfinite_policy"
input='{"logp":[-1,-2,-3],"ref":[-1,-1,null],"offsets":[0,1,3]}'
refused "NaN packed ref" "ref[2] is null (NaN), not finite, in a valid token; set mask[2] to 0" "${eval_k1[@]}"
input='{"logp":[[-1,-2]],"ref":[[-1,-1]]}'
refused "no behavior" "--spec 'k3-as-loss,is=differentiable' weights tokens by pi/mu (is=differentiable) but the input has no \"behavior\"" eval --spec k3-as-loss,is=differentiable
check "no behavior: no C++ call" lacks "$last_err" "with_behavior"
refused "--tokens 0" "--tokens 0 must be -1 (count this batch) or a global count of at least this batch's own 2 valid tokens" eval --spec k1-in-reward --tokens 0
input='{"logits":[[[0,1],[0,1]],[[0,1],[null,1]]],"ref_logits":[[[0,0],[0,0]],[[0,0],[0,0]]]}'
refused "NaN padded logits" "logits[1][1][0] is null (NaN) in a valid row" eval
input='{"logits":[[0,1],["-inf","-inf"]],"ref_logits":[[0,0],[0,0]]}'
refused "a row of -inf" "logits[1] has no finite entry (every logit is \"-inf\")" eval
check "a row of -inf: no C++ name" lacks "$last_err" "z row"
# A long logits --spec: the library quotes it cut to 80 characters; the CLI quotes the user's
# own text the same way, never the stand-in term it puts in front of the keys.
input='{"logits":[[0,1]],"ref_logits":[[1,0]]}'
long_spec="agg=token-sum,beta=1,agg-scale=1,agg-eps=0,agg-seq-eps=0,beta=2,agg-scale=3,agg=token-mean"
refused "long logits --spec" "spec 'agg=token-sum,beta=1,agg-scale=1,agg-eps=0,agg-seq-eps=0,beta=2,agg-scale=3,agg=... (90 characters)': key 'beta' given twice" eval --spec "$long_spec"
check "long logits --spec: no stand-in term" lacks "$last_err" "k1-in-reward"

# ---- 16-bit logits (--type bf16 / fp16): rounded to the format, computed in float ---------
# Values every format holds exactly: the 16-bit run equals the float run, byte for byte.
input='{"logits":[[0.5,2.5,"-inf",-3],[1,2,3,4]],"ref_logits":[[0,1,"-inf",0.25],[3,2,1,0]],"ids":[1,3],"coef":[0.5,-1]}'
out32=$("$klgrad" eval --type float <<<"$input")
for t in bf16 fp16; do
  for d in reverse-kl forward-kl jensen-shannon forward-kl-top-k reverse-kl-top-k-tail; do
    in_d=${input/\{/\{\"divergence\":\"$d\",}
    [[ $d == *top-k* ]] && in_d=${in_d/\{/\{\"top_k\":2,}
    check "--type $t $d equals --type float" test "$("$klgrad" eval --type $t <<<"$in_d")" = "$("$klgrad" eval --type float <<<"$in_d")"
  done
done
check "--type bf16: the float output" contains "$out32" '"logits_grad"'
input='{"logits":[[0,1],[null,1]],"ref_logits":[[0,0],[0,0]]}'
refused "--type bf16 NaN logits" "logits[1][0] is null (NaN) in a valid row" eval --type bf16
input='{"logits":[[0,1]],"ref_logits":[[0,70000]]}'
refused "--type fp16 beyond its range" "ref_logits[0][1] is" eval --type fp16
input='{"logp":[[-1]],"ref":[[-1]]}'
refused "--type bf16 logp input" "--type bf16 applies to logits input" eval --type bf16 --spec k1-in-reward

finish
