#!/usr/bin/env bash
# Tests of the klgrad program's eval and audit subcommands: JSON in, JSON out, exit status 2
# with a message on bad input. Usage: test_cli.sh PATH/TO/klgrad. Expected numbers are
# closed forms computed here with awk (k3'(s) = 1 - exp(-s)), not copied from a run.
set -uo pipefail
klgrad=$1
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

# eval: padded batch, k3-as-loss with token-sum: coef = 1 - exp(-(lp - lr)).
out=$(echo '{"logp":[[-1,-2]],"ref":[[-1.5,-1]]}' | "$klgrad" eval --spec k3-as-loss,agg=token-sum)
check "eval exits 0" test $? -eq 0
expected=$(awk 'BEGIN { printf "%.6f %.6f", 1 - exp(-0.5), 1 - exp(1) }')
got=$(/usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.6f %.6f" % tuple(d["coef"][0]))' <<<"$out")
check "eval k3 coefficients are 1 - exp(-s)" test "$got" = "$expected"
check "eval prints the canonical spec" contains "$out" '"spec":"k3-as-loss,agg=token-sum"'
check "eval counts tokens" contains "$out" '"tokens":2'

# eval: packed batch with a mask and null (NaN) in a masked slot.
out=$(echo '{"logp":[-1,null,-2],"ref":[-1,-1,-1],"offsets":[0,2,3],"mask":[1,0,1]}' |
  "$klgrad" eval --spec k1-in-reward,agg=token-sum --type float)
check "eval packed exits 0" test $? -eq 0
check "eval packed masked NaN gives 0" contains "$out" '"coef":[0.0,0.0,-1.0]'
check "eval packed counts sequences" contains "$out" '"sequences":2'

# eval: errors go to stderr with status 2.
err=$(echo '{"logp":[[-1]],"ref":[[-1]]}' | "$klgrad" eval --spec k4-as-loss 2>&1 >/dev/null)
check "bad spec exits 2" test $? -eq 2
check "bad spec names the word" contains "$err" "unknown estimator 'k4'"
err=$(echo '{"logp":[[-1,-2]],"ref":[[-1]]}' | "$klgrad" eval --spec k1-in-reward 2>&1 >/dev/null)
check "shape mismatch exits 2" test $? -eq 2
check "shape mismatch names both shapes" contains "$err" "logp is 1x2 but ref is 1x1"
err=$(echo '{"logp":[[-1, null]],"ref":[[-1, -1]]}' | "$klgrad" eval --spec k1-in-reward 2>&1 >/dev/null)
check "unmasked NaN exits 2" test $? -eq 2
check "unmasked NaN names the field and index" contains "$err" "logp[0][1] is null (NaN)"
err=$(echo 'not json' | "$klgrad" eval --spec k1-in-reward 2>&1 >/dev/null)
check "malformed JSON exits 2" test $? -eq 2

# eval --spec: the library's number grammar and messages, word for word.
batch='{"logp":[[-1]],"ref":[[-1]]}'
err=$(echo "$batch" | "$klgrad" eval --spec 'k3-as-loss,beta=1e-310' 2>&1 >/dev/null)
check "subnormal beta exits 2" test $? -eq 2
check "subnormal beta says why" test "$err" = "klgrad: spec 'k3-as-loss,beta=1e-310': beta='1e-310' is nonzero but below the smallest normal double, 2.2250738585072014e-308: write 0 or a larger magnitude"
err=$(echo "$batch" | "$klgrad" eval --spec 'k3-as-loss,beta=0x1p3' 2>&1 >/dev/null)
check "hex beta says why" test "$err" = "klgrad: spec 'k3-as-loss,beta=0x1p3': beta='0x1p3' is not a finite number: write [+|-]DIGITS[.DIGITS][e[+|-]DIGITS] in decimal, without spaces (e.g. 0.04, -1, 1e-3)"
err=$(echo "$batch" | "$klgrad" eval --spec 'k3-as-loss,clamp=value:-10:10/value:-1:1' 2>&1 >/dev/null)
check "duplicate clamp items name both" test "$err" = "klgrad: spec 'k3-as-loss,clamp=value:-10:10/value:-1:1': clamp='value:-10:10/value:-1:1': 'value:-10:10' and 'value:-1:1' set the same thing: give one"
long="k3-as-loss,beta=$(head -c 100000 /dev/zero | tr '\0' 7)"
err=$(echo "$batch" | "$klgrad" eval --spec "$long" 2>&1 >/dev/null)
check "a 100 KB spec exits 2" test $? -eq 2
check "a 100 KB spec gives a short message" test "${#err}" -lt 400
check "a 100 KB spec's message says its length" contains "$err" "... (100016 characters)': beta='"
out=$(echo '{"logp":[[-1]],"ref":[[-1]],"behavior":[[-1]]}' | "$klgrad" eval --spec 'k3-as-loss,is=detached,is-mask=.5:+inf,beta=+4e-2' 2>/dev/null)
check "is-mask +inf and signed beta parse and print canonically" contains "$out" '"spec":"k3-as-loss,is=detached,is-mask=0.5:inf,beta=0.04"'

# audit: a one-step categorical policy (V = 2, T = 1), k2-as-loss follows grad RKL.
policy=$(mktemp)
echo '{"vocab":2,"steps":1,"logits":[[0.3,-0.2]],"ref_logits":[[0.0,0.5]]}' >"$policy"
out=$("$klgrad" audit --policy "$policy" --spec k2-as-loss)
check "audit exits 0" test $? -eq 0
check "audit: k2-as-loss follows rkl" contains "$out" '"follows":"rkl"'
out=$("$klgrad" audit --policy "$policy" --spec k3-as-loss)
check "audit: k3-as-loss follows fkl" contains "$out" '"follows":"fkl"'
echo '{"vocab":2,"steps":1,"logits":[[0.3]],"ref_logits":[[0.0,0.5]]}' >"$policy"
err=$("$klgrad" audit --policy "$policy" --spec k2-as-loss 2>&1 >/dev/null)
check "audit: a short logits row exits 2" test $? -eq 2
rm -f "$policy"

# eval edges (issue 13): an all-padding batch gives zeros (TRL's token-mean divided by 0
# before), clamp bands without 0 are refused, a huge beta saturates, global counts are checked.
out=$(echo '{"logp":[[-1,-2],[-1,-1]],"ref":[[-3,-1],[-2,-2]],"mask":[[0,0],[0,0]]}' |
  "$klgrad" eval --spec k3-as-loss,preset=trl,beta=0.04 --type float)
check "eval all padding exits 0" test $? -eq 0
check "eval all padding gives zero coefficients" contains "$out" '"coef":[[0.0,0.0],[0.0,0.0]]'
check "eval all padding gives zero loss" contains "$out" '"loss":0.0'
check "eval all padding gives zero kl" contains "$out" '"kl":0.0,"kl_sequence":0.0'
err=$(echo '{"logp":[[-1]],"ref":[[-1]]}' | "$klgrad" eval --spec k3-as-loss,clamp=value:1:2 2>&1 >/dev/null)
check "clamp band without 0 exits 2" test $? -eq 2
check "clamp band without 0 says why" contains "$err" "clamp value band [1, 2] excludes 0"
out=$(echo '{"logp":[[-1,-2,-1]],"ref":[[-2,-1,-1]]}' |
  "$klgrad" eval --spec k1-in-reward,agg=token-sum,beta=1e308 --type float)
check "eval huge beta in float exits 0" test $? -eq 0
check "eval huge beta saturates, 0 stays 0" contains "$out" '"coef":[[3.4028234663852886e+38,-3.4028234663852886e+38,0.0]]'
batch='{"logp":[[-1,-2],[-1,-1]],"ref":[[-3,-1],[-2,-2]],"mask":[[1,1],[1,0]]}'
err=$(echo "$batch" | "$klgrad" eval --spec k3-as-loss --tokens 2 2>&1 >/dev/null)
check "--tokens below the local count exits 2" test $? -eq 2
check "--tokens below the local count names both" contains "$err" "--tokens 2 must be -1 (count this batch) or a global count of at least this batch's own 3 valid tokens"
err=$(echo "$batch" | "$klgrad" eval --spec k3-as-loss,agg=seq-mean-token-sum --sequences -3 2>&1 >/dev/null)
check "negative --sequences exits 2" test $? -eq 2
check "negative --sequences is named" contains "$err" "--sequences -3 must be -1"
out=$(echo "$batch" | "$klgrad" eval --spec k3-as-loss,agg=token-sum --tokens 3 --sequences 2)
check "counts equal to the local ones are accepted" test $? -eq 0
err=$(echo '{"logits":[[[0,1],[1,0]]],"ref_logits":[[[1,0],[0,1]]]}' |
  "$klgrad" eval --spec agg=token-mean --tokens 1 2>&1 >/dev/null)
check "logits input: --tokens below the local count exits 2" test $? -eq 2
check "logits input: --tokens is named" contains "$err" "--tokens 1 must be -1"

finish
