#!/usr/bin/env bash
# Tests of `klgrad explain --trainer NAME --config FILE` (issue 17, items 1, 2, 6): small
# configurations in each trainer's own key names (its defaults, the KL in the loss, in the
# reward, each estimator, bias options, clamps, stale policies) give the expected klgrad specs
# (written here from docs/presets.md), each term's verdict is exactly `klgrad explain --spec`
# of its spec, and refused configurations exit 2 naming the key and the value. That the specs
# reproduce the trainers' formulas is python/tests/test_trainer_config.py (torch autograd).
# Usage: test_explain_trainer.sh PATH/TO/klgrad.
set -uo pipefail
klgrad=$1
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

cat >"$tmp/terms.py" <<'PY'
import json, subprocess, sys
doc = json.load(sys.stdin)
assert list(doc) == ["trainer", "read_at", "terms", "defaults_used", "warnings"], list(doc)
for t in doc["terms"]:
    assert list(t) == ["role", "spec", "beta", "verdict"], list(t)
    alone = json.loads(subprocess.run([sys.argv[1], "explain", "--spec", t["spec"]],
                                      capture_output=True, text=True, check=True).stdout)
    assert t["verdict"] == alone, t["spec"]
    print(t["role"], t["spec"])
PY
# terms TRAINER CONFIG-TEXT [--set K=V ...]: "role spec" lines, one per term (and checks
# that each verdict is `klgrad explain --spec` of the spec and the JSON's fields).
terms() {
  local trainer=$1 text=$2
  shift 2
  printf '%s\n' "$text" >"$tmp/config"
  out=$("$klgrad" explain --trainer "$trainer" --config "$tmp/config" "$@")
  local status=$?
  printf '%s\n' "$out" >"$tmp/out.json"  # for warns and defaults (terms runs in a subshell)
  [ "$status" -eq 0 ] || { echo "FAILED: $trainer exits $status"; failures=$((failures + 1)); return; }
  /usr/bin/python3 "$tmp/terms.py" "$klgrad" <<<"$out"
}
# expect NAME TRAINER CONFIG EXPECTED-LINES [--set ...]
expect() {
  local name=$1 trainer=$2 text=$3 want=$4
  shift 4
  local got
  got=$(terms "$trainer" "$text" "$@")
  check "$name" test "$got" = "$want"
  [ "$got" = "$want" ] || printf '  want: %s\n  got:  %s\n' "$want" "$got"
}
warns() {  # warns NAME FRAGMENT: the last output's warnings hold FRAGMENT
  check "$1: warns '$2'" contains "$(/usr/bin/python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["warnings"]))' <"$tmp/out.json")" "$2"
}
defaults() {  # defaults NAME KEY=VALUE: the last output took that default
  check "$1: default $2" contains "$(/usr/bin/python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["defaults_used"]))' <"$tmp/out.json")" "$2"
}
refused() {  # refused NAME TRAINER CONFIG FRAGMENT [--set ...]
  local name=$1 trainer=$2 text=$3 fragment=$4
  shift 4
  printf '%s\n' "$text" >"$tmp/config"
  local err status
  err=$("$klgrad" explain --trainer "$trainer" --config "$tmp/config" "$@" 2>&1 >/dev/null)
  status=$?
  check "$name: exits 2" test "$status" -eq 2
  check "$name: says '$fragment'" contains "$err" "$fragment"
  contains "$err" "$fragment" || echo "  got: ${err:0:400}"
}

# ---- verl (YAML, nested keys) ------------------------------------------------------------
expect "verl defaults: no KL" verl "{}" ""
defaults "verl defaults" "actor_rollout_ref.actor.use_kl_loss=false"
defaults "verl defaults" "algorithm.use_kl_in_reward=false"
warns "verl defaults" "no KL term"
verl_loss='actor_rollout_ref:
  actor:
    use_kl_loss: true'
expect "verl KL loss" verl "$verl_loss" "loss k3-as-loss,preset=verl,beta=0.001"
defaults "verl KL loss" "actor_rollout_ref.actor.kl_loss_type=low_var_kl"
defaults "verl KL loss" "actor_rollout_ref.actor.kl_loss_coef=0.001"
warns "verl KL loss" "fkl_token on-policy over sequences, the forward KL"
warns "verl KL loss" "outside [-2.6109, 10.99998]"
for pair in kl:k1 k1:k1 mse:k2 k2:k2 abs:abs low_var_kl:k3 k3:k3 "k3+:k3~k2" "low_var_kl+:k3~k2" \
            "kl+:k1~k2" "abs+:abs~k2" "mse+:k2"; do
  expect "verl kl_loss_type ${pair%%:*}" verl "$verl_loss
    kl_loss_type: ${pair%%:*}
    kl_loss_coef: 0.01" "loss ${pair#*:}-as-loss,preset=verl,beta=0.01"
done
expect "verl k3+" verl "$verl_loss
    kl_loss_type: k3+" "loss k3~k2-as-loss,preset=verl,beta=0.001"
warns "verl k3+" "raises NotImplementedError in verl before PR #6058"
expect "verl k1 loss" verl "$verl_loss
    kl_loss_type: kl" "loss k1-as-loss,preset=verl,beta=0.001"
warns "verl k1 loss" "has zero expected gradient on-policy"
expect "verl k2 loss" verl "$verl_loss
    kl_loss_type: mse" "loss k2-as-loss,preset=verl,beta=0.001"
warns "verl k2 loss" "follows only the per-token KL (rkl_token)"
expect "verl ppo_epochs 2" verl "$verl_loss
    ppo_epochs: 2" "loss k3-as-loss,preset=verl,beta=0.001"
warns "verl ppo_epochs 2" "actor_rollout_ref.actor.ppo_epochs=2: the batches after the first sample from a stale policy mu, where the loss term follows none"
expect "verl one mini-batch per rollout" verl "$verl_loss
    ppo_mini_batch_size: 64
data: {train_batch_size: 64}" "loss k3-as-loss,preset=verl,beta=0.001"
check "verl one mini-batch per rollout: not stale" test "$(grep -c 'stale policy' "$tmp/out.json")" -eq 0
expect "verl default mini-batches" verl "$verl_loss" "loss k3-as-loss,preset=verl,beta=0.001"
warns "verl default mini-batches" "data.train_batch_size=1024 with actor_rollout_ref.actor.ppo_mini_batch_size=256 (4 optimizer steps per rollout): the batches after the first sample from a stale policy"
defaults "verl default mini-batches" "actor_rollout_ref.actor.ppo_mini_batch_size=256"
expect "verl loss_agg_mode" verl "$verl_loss
    loss_agg_mode: seq-mean-token-mean" "loss k3-as-loss,preset=verl,agg=seq-mean-token-mean,beta=0.001"
expect "verl KL in reward (GAE)" verl "algorithm:
  use_kl_in_reward: true" "reward k1-in-reward,preset=verl,level=to-go,beta=0.001"
defaults "verl KL in reward" "algorithm.kl_penalty=kl"
expect "verl KL in reward (GRPO)" verl "algorithm:
  use_kl_in_reward: true
  adv_estimator: grpo
  kl_penalty: low_var_kl
  kl_ctrl:
    kl_coef: 0.02" "reward k3-in-reward,preset=verl,level=sequence,beta=0.02"
expect "verl KL in reward, GAE gamma" verl "algorithm: {use_kl_in_reward: true, gamma: 0.99}" \
  "reward k1-in-reward,preset=verl,level=to-go,gamma=0.99,beta=0.001"
expect "verl both" verl "$verl_loss
algorithm:
  use_kl_in_reward: True" "loss k3-as-loss,preset=verl,beta=0.001
reward k1-in-reward,preset=verl,level=to-go,beta=0.001"
expect "verl --set" verl "$verl_loss" "loss k2-as-loss,preset=verl,beta=0.001" \
  --set actor_rollout_ref.actor.kl_loss_type=mse
expect "verl --set a missing key" verl "{}" "reward k1-in-reward,preset=verl,level=to-go,beta=0.001" \
  --set algorithm.use_kl_in_reward=true
expect "verl unknown KL key" verl "$verl_loss
    kl_loss_typo: k2" "loss k3-as-loss,preset=verl,beta=0.001"
warns "verl unknown KL key" "actor_rollout_ref.actor.kl_loss_typo='k2' is not a KL key klgrad reads"
expect "verl switched-off keys" verl "algorithm:
  kl_penalty: low_var_kl
  kl_ctrl: {type: adaptive, horizon: 10000}" ""
check "verl switched-off keys: no unread-key warning" test "$(grep -c 'is not a KL key' "$tmp/out.json")" -eq 0
refused "verl full" verl "$verl_loss
    kl_loss_type: full" "verl: actor_rollout_ref.actor.kl_loss_type='full' is the full-vocabulary KL"
refused "verl unknown estimator" verl "$verl_loss
    kl_loss_type: k4" "verl: actor_rollout_ref.actor.kl_loss_type='k4' is not one of verl's estimators"
refused "verl bad bool" verl "actor_rollout_ref: {actor: {use_kl_loss: maybe}}" \
  "verl: actor_rollout_ref.actor.use_kl_loss='maybe' is not true or false"
refused "verl bad coefficient" verl "$verl_loss
    kl_loss_coef: lots" "verl: actor_rollout_ref.actor.kl_loss_coef='lots' is not a finite number"
refused "verl bad loss_agg_mode" verl "$verl_loss
    loss_agg_mode: mean" "verl: actor_rollout_ref.actor.loss_agg_mode='mean' is not one of verl's values"
refused "not YAML" verl "a: [1, 2" "not YAML or JSON"
refused "a YAML list" verl "- 1" "verl's configuration is a mapping of its keys"
refused "unknown trainer" nemo "{}" "unknown trainer 'nemo'; trainers: verl, openrlhf"
refused "bad --set" verl "{}" "--set 'algorithm' must be KEY=VALUE" --set algorithm

# ---- OpenRLHF (a command line) -----------------------------------------------------------
expect "openrlhf defaults: k1 in the reward" openrlhf "python3 -m openrlhf.cli.train_ppo_ray --pretrain x" \
  "reward k1-in-reward,preset=openrlhf,level=to-go,beta=0.01"
defaults "openrlhf defaults" "algo.kl.estimator=k1"
defaults "openrlhf defaults" "algo.kl.init_coef=0.01"
for k in k1 k2 k3; do
  expect "openrlhf KL loss $k" openrlhf "--algo.kl.use_loss --algo.kl.estimator $k --algo.kl.init_coef 0.001" \
    "loss $k-as-loss,preset=openrlhf,beta=0.001"
done
warns "openrlhf k3" "the gradient is NaN for s < -88.72"
expect "openrlhf names before the rename" openrlhf 'deepspeed --module openrlhf.cli.train_ppo_ray \
   --kl_estimator k3 --use_kl_loss --init_kl_coef 0.01   # GRPO
   --max_epochs 2' "loss k3-as-loss,preset=openrlhf,beta=0.01"
warns "openrlhf max_epochs" "--train.max_epochs 2: the batches after the first sample from a stale policy"
expect "openrlhf default batches" openrlhf "--algo.kl.use_loss --algo.kl.estimator k2" "loss k2-as-loss,preset=openrlhf,beta=0.01"
warns "openrlhf default batches" "--rollout.batch_size x --rollout.n_samples_per_prompt = 1024 with --train.batch_size 128 (8 optimizer steps per rollout)"
expect "openrlhf one step per rollout" openrlhf "--algo.kl.use_loss --rollout_batch_size 16 --n_samples_per_prompt 8 --train_batch_size 128" \
  "loss k1-as-loss,preset=openrlhf,beta=0.01"
check "openrlhf one step per rollout: not stale" test "$(grep -c 'stale policy' "$tmp/out.json")" -eq 0
expect "openrlhf gamma" openrlhf "--algo.advantage.estimator reinforce --algo.advantage.gamma 0.9" \
  "reward k1-in-reward,preset=openrlhf,level=to-go,gamma=0.9,beta=0.01"
expect "openrlhf gamma forced to 1 for rloo" openrlhf "--algo.advantage.estimator rloo --algo.advantage.gamma 0.9" \
  "reward k1-in-reward,preset=openrlhf,level=to-go,beta=0.01"
expect "openrlhf init_coef 0: no reference, no KL" openrlhf "--algo.kl.init_coef 0" ""
refused "openrlhf both spellings" openrlhf "--kl_estimator k3 --algo.kl.estimator k2" \
  "kl_estimator='k3' and algo.kl.estimator='k2' are two spellings of one option"
refused "openrlhf old name, bad value" openrlhf "--kl_estimator k4" \
  "openrlhf: algo.kl.estimator='k4' (given as kl_estimator) is not one of openrlhf's values"
refused "openrlhf estimator" openrlhf "--algo.kl.estimator low_var_kl" \
  "openrlhf: algo.kl.estimator='low_var_kl' is not one of openrlhf's values: k1, k2, k3"
expect "openrlhf given twice" openrlhf "--algo.kl.estimator k2 --algo.kl.estimator=k3" \
  "reward k3-in-reward,preset=openrlhf,level=to-go,beta=0.01"
warns "openrlhf given twice" "--algo.kl.estimator is given twice ('k2', then 'k3'): the last wins"

# ---- TRL (GRPOConfig as YAML or JSON) ----------------------------------------------------
expect "trl defaults: beta 0, no KL" trl "{}" ""
warns "trl defaults" "beta=0 (TRL's default)"
expect "trl beta (JSON)" trl '{"beta": 0.04}' "loss k3-as-loss,preset=trl,beta=0.04"
defaults "trl beta" "loss_type=dapo"
warns "trl beta" "its value is inf in fp32"
expect "trl bias correction" trl '{"beta": 0.04, "use_bias_correction_kl": true}' \
  "loss k3-as-loss,preset=trl,is=differentiable,beta=0.04"
expect "trl sequence-level bias correction" trl 'beta: 0.04
use_bias_correction_kl: true
importance_sampling_level: sequence' \
  "loss k3-as-loss,preset=trl,is=differentiable,is-level=sequence-mean,beta=0.04"
expect "trl loss_type grpo" trl 'beta: 0.001
loss_type: grpo' "loss k3-as-loss,preset=trl,agg=seq-mean-token-mean,beta=0.001"
expect "trl num_iterations 2" trl 'beta: 0.001
num_iterations: 2' "loss k3-as-loss,preset=trl,beta=0.001"
warns "trl num_iterations 2" "num_iterations=2: the batches after the first sample from a stale policy mu, where the loss term follows none"

# ---- NeMo-RL (YAML) ----------------------------------------------------------------------
expect "nemo-rl defaults: k3 loss" nemo-rl "{}" "loss k3-as-loss,preset=nemo-rl,beta=0.01"
defaults "nemo-rl defaults" "loss_fn.reference_policy_kl_type=k3"
defaults "nemo-rl defaults" "loss_fn.kl_input_clamp_value=20"
for k in k1 k2 k3; do
  expect "nemo-rl $k" nemo-rl "loss_fn: {reference_policy_kl_type: $k, reference_policy_kl_penalty: 0.05}" \
    "loss $k-as-loss,preset=nemo-rl,beta=0.05"
done
expect "nemo-rl without clamps" nemo-rl "loss_fn: {kl_input_clamp_value: null, kl_output_clamp_value: null}" \
  "loss k3-as-loss,preset=nemo-rl,clamp=none,beta=0.01"
expect "nemo-rl input clamp 30" nemo-rl "loss_fn: {kl_input_clamp_value: 30}" \
  "loss k3-as-loss,preset=nemo-rl,clamp=log-ratio:-30:30/value:-10:10/after-weight/detach-weight,beta=0.01"
expect "nemo-rl sequence-level loss" nemo-rl "loss_fn: {token_level_loss: false}" \
  "loss k3-as-loss,preset=nemo-rl,agg=seq-mean-token-mean,beta=0.01"
expect "nemo-rl KL in reward with GRPO: none" nemo-rl "loss_fn: {use_kl_in_reward: true}" ""
warns "nemo-rl KL in reward with GRPO" "does not apply the in-reward KL"
expect "nemo-rl KL in reward with Reinforce++" nemo-rl "loss_fn: {use_kl_in_reward: true}
grpo: {adv_estimator: {name: reinforce_plus_plus}}" "reward k3-in-reward,preset=nemo-rl,beta=0.01"
expect "nemo-rl on-policy approximation" nemo-rl "loss_fn: {use_on_policy_kl_approximation: true}" \
  "loss k3-as-loss,preset=nemo-rl,beta=0.01"
warns "nemo-rl on-policy approximation" "pass them as the behaviour log-probs"
refused "nemo-rl estimator" nemo-rl "loss_fn: {reference_policy_kl_type: abs}" \
  "nemo-rl: loss_fn.reference_policy_kl_type='abs' is not one of nemo-rl's values: k1, k2, k3"

# ---- slime (a command line) --------------------------------------------------------------
expect "slime defaults: no KL" slime "python train.py --advantage-estimator grpo" ""
expect "slime use-kl-loss, coef 0" slime "--use-kl-loss" ""
warns "slime use-kl-loss, coef 0" "--kl-loss-coef 0: the KL loss adds nothing"
for k in k1 k2 k3; do
  expect "slime KL loss $k" slime "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type $k" \
    "loss $k-as-loss,preset=slime,beta=0.01"
done
expect "slime low_var_kl" slime "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type low_var_kl" \
  "loss k3-as-loss,preset=slime,clamp=value:-10:10/after-weight,beta=0.01"
expect "slime low_var_kl unbiased" slime "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type low_var_kl --use-unbiased-kl" \
  "loss k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight,beta=0.01"
expect "slime per-token loss" slime "--use-kl-loss --kl-loss-coef 0.01 --calculate-per-token-loss" \
  "loss k1-as-loss,preset=slime,agg=token-mean,beta=0.01"
expect "slime KL in reward, ppo" slime "--kl-coef 0.02 --advantage-estimator ppo" \
  "reward k1-in-reward,preset=slime,level=to-go,beta=0.02"
expect "slime KL in reward, grpo: ignored" slime "--kl-coef 0.02" ""
warns "slime KL in reward, grpo" "that estimator ignores the KL in the reward"
expect "slime steps per rollout" slime "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type k3 --num-steps-per-rollout 4" \
  "loss k3-as-loss,preset=slime,beta=0.01"
warns "slime steps per rollout" "--num-steps-per-rollout 4: the batches after the first"
expect "slime launch script with an argument array" slime 'GRPO_ARGS=(
   --use-kl-loss
   --kl-loss-coef 0.01
   # --kl-coef 0.00
   --kl-loss-type low_var_kl
   --use-unbiased-kl
)
python3 train.py "${GRPO_ARGS[@]}"' "loss k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight,beta=0.01"
expect "slime flag before a closing parenthesis" slime 'ARGS=(--kl-loss-coef 0.01 --kl-loss-type k2 --use-kl-loss )' \
  "loss k2-as-loss,preset=slime,beta=0.01"
refused "slime unresolved variable" slime '--use-kl-loss --kl-loss-coef ${KL}' \
  "slime: kl-loss-coef='\${KL}' is not a finite number"
refused "slime unclosed quote" slime "--kl-loss-type 'k3" "the command line has an unclosed '"
expect "slime quoted and --key=value" slime "--use-kl-loss --kl-loss-coef=\"0.01\" --kl-loss-type 'k2'" \
  "loss k2-as-loss,preset=slime,beta=0.01"
expect "slime --set" slime "--use-kl-loss --kl-loss-coef 0.01" "loss k3-as-loss,preset=slime,beta=0.01" \
  --set kl-loss-type=k3
refused "slime both coefficients" slime "--kl-coef 0.01 --kl-loss-coef 0.01" "slime asserts that only one of them is set"

# ---- open-instruct (a command line) ------------------------------------------------------
expect "open-instruct defaults: estimator 2, beta 0.05" open-instruct "python open_instruct/grpo_fast.py" \
  "loss k3-as-loss,preset=open-instruct,beta=0.05"
defaults "open-instruct defaults" "kl_estimator=2"
for pair in 0:k1-as-loss,preset=open-instruct 1:k2-as-loss,preset=open-instruct \
            2:k3-as-loss,preset=open-instruct 3:k1-as-loss,preset=open-instruct,is=differentiable; do
  expect "open-instruct estimator ${pair%%:*}" open-instruct "--kl_estimator ${pair%%:*} --beta 0.01" \
    "loss ${pair#*:},beta=0.01"
done
expect "open-instruct beta 0" open-instruct "--beta 0.0 --load_ref_policy False" ""
expect "open-instruct constant denominator" open-instruct "--loss_denominator 4096" \
  "loss k3-as-loss,preset=open-instruct,agg=token-sum-norm,agg-norm=4096,beta=0.05"
expect "open-instruct epochs" open-instruct "--num_epochs 2" "loss k3-as-loss,preset=open-instruct,beta=0.05"
warns "open-instruct epochs" "--num_epochs 2: the batches after the first sample from a stale policy"
refused "open-instruct beta without a reference" open-instruct "--load_ref_policy False" \
  "open-instruct: load_ref_policy='False' with --beta 0.05"

# ---- ROLL (YAML) -------------------------------------------------------------------------
expect "roll defaults: no KL" roll "{}" ""
expect "roll KL loss (hard-coded k3)" roll "use_kl_loss: true
kl_loss_coef: 0.001" "loss k3-as-loss,preset=roll,beta=0.001"
expect "roll KL in reward with coefficient 0" roll "add_token_level_kl: true
init_kl_coef: 0.0" ""
warns "roll KL in reward with coefficient 0" "the reward term (kl_penalty) has coefficient 0: it adds nothing"
expect "roll KL in reward" roll "add_token_level_kl: true" "reward k1-in-reward,preset=roll,level=to-go,beta=0.2"
for pair in kl:k1 abs:abs mse:k2 k3:k3; do
  expect "roll kl_penalty ${pair%%:*}" roll "add_token_level_kl: true
kl_penalty: ${pair%%:*}
init_kl_coef: 0.05" "reward ${pair#*:}-in-reward,preset=roll,level=to-go,beta=0.05"
done
expect "roll KL in reward, gamma" roll "{add_token_level_kl: true, gamma: 0.95}" \
  "reward k1-in-reward,preset=roll,level=to-go,gamma=0.95,beta=0.2"
refused "roll low_var_kl" roll "add_token_level_kl: true
kl_penalty: low_var_kl" "roll: kl_penalty='low_var_kl' is not one of roll's values: kl, abs, mse, k3, full"

# ---- EasyR1 (YAML) -----------------------------------------------------------------------
expect "easyr1 defaults: kl in the reward" easyr1 "{}" "reward k1-in-reward,preset=easyr1,level=sequence,beta=0.001"
expect "easyr1 example config" easyr1 "algorithm:
  use_kl_loss: true
  kl_penalty: low_var_kl
  kl_coef: 1.0e-2" "loss k3-as-loss,preset=easyr1,beta=0.01"
warns "easyr1 example config" "data.rollout_batch_size=512 with worker.actor.global_batch_size=256 (2 optimizer steps per rollout): the batches after the first sample from a stale policy"
expect "easyr1 one step per rollout" easyr1 "algorithm: {use_kl_loss: true, kl_penalty: low_var_kl}
data: {rollout_batch_size: 128}
worker: {actor: {global_batch_size: 128}}" "loss k3-as-loss,preset=easyr1,beta=0.001"
check "easyr1 one step per rollout: not stale" test "$(grep -c 'stale policy' "$tmp/out.json")" -eq 0
expect "easyr1 disable_kl" easyr1 "algorithm: {disable_kl: true}" ""
refused "easyr1 k3+" easyr1 "algorithm: {use_kl_loss: true, kl_penalty: k3}" \
  "easyr1: algorithm.kl_penalty='k3' is not one of easyr1's estimators: kl, abs, mse, low_var_kl"

# ---- --format table and the plain explain ------------------------------------------------
printf '%s\n' "$verl_loss" >"$tmp/config"
table=$("$klgrad" explain --trainer verl --config "$tmp/config" --format table)
check "table: one row per term" contains "$table" "k3-as-loss,preset=verl,beta=0.001"
check "table: the verdicts" contains "$table" "fkl_token"
check "table: defaults" contains "$table" "actor_rollout_ref.actor.kl_loss_type=low_var_kl"
err=$("$klgrad" explain 2>&1 >/dev/null)
check "explain without --spec or --trainer: exits 2" test $? -eq 2
check "explain without --spec or --trainer: says so" contains "$err" "explain needs --spec SPEC or --trainer NAME --config FILE"
err=$("$klgrad" explain --trainer verl 2>&1 >/dev/null)
check "--trainer without --config" contains "$err" "--trainer needs --config FILE"

finish
