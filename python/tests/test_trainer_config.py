"""klgrad.from_trainer_config: each trainer's configuration, written in its own keys, gives
the expected klgrad specs (from docs/presets.md), the same dict as `klgrad explain --trainer`,
and each spec, evaluated by klgrad, reproduces the trainer's formula under torch autograd
(the formulas of tests/test_presets_torch.py, re-typed from docs/presets.md; a loss term's
coefficient is beta times the formula's gradient, an in-reward term's is beta times the
return of its penalties, as REINFORCE/GAE with gamma = lambda = 1 back-propagate it)."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import klgrad  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import test_presets_torch as formulas  # noqa: E402  (the trainers' formulas)


def plain(kind):  # verl's kl/mse/abs, slime's k1/k2/k3, ROLL's kl/mse/abs: unclamped
    def f(lp, lr):
        s = lp - lr
        return {"k1": s, "k2": s ** 2 / 2, "abs": s.abs(), "k3": torch.exp(-s) - 1 + s}[kind]
    return f


def nemo_default(kind):  # NeMo-RL's default weight exp(lp - sg lp)
    return lambda lp, lr: formulas.nemo(kind)(lp, lr, lp.detach())


# (trainer, its configuration, expected specs {role: spec}, formula of the first term,
#  behaviour offset lp - lb or None when the formula takes no behaviour)
CASES = [
    ("verl", {}, {}, None, None),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True}}},
     {"loss": "k3-as-loss,preset=verl,beta=0.001"}, formulas.low_var_kl, None),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "k3+",
                                              "kl_loss_coef": 0.01}}},
     {"loss": "k3~k2-as-loss,preset=verl,beta=0.01"}, formulas.verl_k3_plus, None),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "mse"}}},
     {"loss": "k2-as-loss,preset=verl,beta=0.001"}, plain("k2"), None),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "abs"}}},
     {"loss": "abs-as-loss,preset=verl,beta=0.001"}, plain("abs"), None),
    ("verl", {"algorithm": {"use_kl_in_reward": True, "kl_ctrl": {"kl_coef": 0.05}}},
     {"reward": "k1-in-reward,preset=verl,level=to-go,beta=0.05"}, plain("k1"), None),
    ("verl", {"algorithm": {"use_kl_in_reward": True, "adv_estimator": "grpo",
                            "kl_penalty": "low_var_kl"}},
     {"reward": "k3-in-reward,preset=verl,level=sequence,beta=0.001"}, formulas.low_var_kl, None),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True}},
              "algorithm": {"use_kl_in_reward": True}},
     {"loss": "k3-as-loss,preset=verl,beta=0.001",
      "reward": "k1-in-reward,preset=verl,level=to-go,beta=0.001"}, formulas.low_var_kl, None),
    ("openrlhf", ["--pretrain", "m"], {"reward": "k1-in-reward,preset=openrlhf,level=to-go,beta=0.01"},
     formulas.openrlhf("k1"), None),
    ("openrlhf", "--algo.kl.use_loss --algo.kl.estimator k2",
     {"loss": "k2-as-loss,preset=openrlhf,beta=0.01"}, formulas.openrlhf("k2"), None),
    ("openrlhf", "--use_kl_loss --kl_estimator k3 --init_kl_coef 0.001",
     {"loss": "k3-as-loss,preset=openrlhf,beta=0.001"}, formulas.openrlhf("k3"), None),
    ("trl", {}, {}, None, None),
    ("trl", {"beta": 0.04}, {"loss": "k3-as-loss,preset=trl,beta=0.04"}, formulas.trl, None),
    ("trl", {"beta": 0.04, "use_bias_correction_kl": True},
     {"loss": "k3-as-loss,preset=trl,is=differentiable,beta=0.04"}, formulas.trl_bias_corrected, 0.1),
    ("nemo-rl", {}, {"loss": "k3-as-loss,preset=nemo-rl,beta=0.01"}, nemo_default("k3"), None),
    ("nemo-rl", {"loss_fn": {"reference_policy_kl_type": "k1"}},
     {"loss": "k1-as-loss,preset=nemo-rl,beta=0.01"}, nemo_default("k1"), None),
    ("nemo-rl", {"loss_fn": {"reference_policy_kl_type": "k2", "use_on_policy_kl_approximation": True}},
     {"loss": "k2-as-loss,preset=nemo-rl,beta=0.01"}, formulas.nemo("k2"), 0.1),
    ("nemo-rl", {"loss_fn": {"use_kl_in_reward": True},
                 "grpo": {"adv_estimator": {"name": "reinforce_plus_plus"}}},
     {"reward": "k3-in-reward,preset=nemo-rl,beta=0.01"}, nemo_default("k3"), None),
    ("slime", "--kl-coef 0.02 --advantage-estimator ppo --kl-loss-type low_var_kl",
     {"reward": "k3-in-reward,preset=slime,clamp=value:-10:10,level=to-go,beta=0.02"},
     formulas.roll_k3, None),
    ("slime", "--use-kl-loss --kl-loss-coef 0.01",
     {"loss": "k1-as-loss,preset=slime,beta=0.01"}, plain("k1"), None),
    ("slime", "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type k3",
     {"loss": "k3-as-loss,preset=slime,beta=0.01"}, formulas.trl, None),
    ("slime", "--use-kl-loss --kl-loss-coef 0.01 --kl-loss-type low_var_kl --use-unbiased-kl",
     {"loss": "k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight,beta=0.01"},
     formulas.slime_low_var_kl_unbiased, 0.1),
    ("slime", "--kl-coef 0.02 --advantage-estimator reinforce_plus_plus_baseline --kl-loss-type k2",
     {"reward": "k2-in-reward,preset=slime,beta=0.02"}, plain("k2"), None),
    ("open-instruct", [], {"loss": "k3-as-loss,preset=open-instruct,beta=0.05"},
     formulas.open_instruct(2), 0.0),
    ("open-instruct", ["--kl_estimator", "1"], {"loss": "k2-as-loss,preset=open-instruct,beta=0.05"},
     formulas.open_instruct(1), 0.0),
    ("open-instruct", ["--kl_estimator", "3", "--beta", "0.01"],
     {"loss": "k1-as-loss,preset=open-instruct,is=differentiable,beta=0.01"},
     formulas.open_instruct(3), 0.1),
    ("roll", {"use_kl_loss": True, "kl_loss_coef": 0.001, "loss_agg_mode": "token-mean"},
     {"loss": "k3-as-loss,preset=roll,agg=token-mean,beta=0.001"}, None, None),
    ("roll", {"add_token_level_kl": True, "kl_penalty": "abs"},
     {"reward": "abs-in-reward,preset=roll,level=to-go,beta=0.2"}, plain("abs"), None),
    ("easyr1", {}, {"reward": "k1-in-reward,preset=easyr1,level=sequence,beta=0.001"},
     plain("k1"), None),
    ("easyr1", {"algorithm": {"use_kl_loss": True, "kl_penalty": "low_var_kl", "kl_coef": 1e-2}},
     {"loss": "k3-as-loss,preset=easyr1,beta=0.01"}, formulas.low_var_kl, None),
]


def cli_json(trainer, mapping, tmp_path):
    """What `klgrad explain --trainer` prints for the same configuration."""
    path = tmp_path / "config"
    path.write_text(json.dumps(mapping) if isinstance(mapping, dict) else
                    mapping if isinstance(mapping, str) else " ".join(mapping))
    out = subprocess.run([formulas.KLGRAD, "explain", "--trainer", trainer, "--config", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("trainer,mapping,expected,formula,offset", CASES)
def test_the_specs_are_the_expected_ones(trainer, mapping, expected, formula, offset):
    got = klgrad.from_trainer_config(trainer, mapping)
    assert got["trainer"] == trainer
    assert {t["role"]: t["spec"] for t in got["terms"]} == expected
    for t in got["terms"]:
        assert t["verdict"] == klgrad.explain(t["spec"])
        assert f"beta={t['beta']:g}" in t["spec"]


@pytest.mark.skipif(not os.path.exists(formulas.KLGRAD), reason="the klgrad program is not built")
@pytest.mark.parametrize("trainer,mapping,expected,formula,offset", CASES)
def test_the_same_dict_as_the_cli(trainer, mapping, expected, formula, offset, tmp_path):
    assert klgrad.from_trainer_config(trainer, mapping) == cli_json(trainer, mapping, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trainer,mapping,expected,formula,offset",
                         [c for c in CASES if c[3] is not None])
def test_the_spec_reproduces_the_trainer_formula(trainer, mapping, expected, formula, offset, dtype):
    term = klgrad.from_trainer_config(trainer, mapping)["terms"][0]
    spec, beta = term["spec"], term["beta"]
    assert "agg=" not in spec
    s = torch.tensor(formulas.log_ratios(), dtype=torch.float64)
    lp = torch.full_like(s, -3.0).to(dtype)
    lr = (torch.full_like(s, -3.0) - s).to(dtype)
    lb = None if offset is None else (lp.double() - offset).to(dtype)
    got = klgrad.evaluate(spec + ",agg=token-sum", lp[None].numpy(), lr[None].numpy(),
                          behavior=None if lb is None else lb[None].numpy())
    lpg = lp.clone().requires_grad_(True)
    value = formula(lpg, lr) if lb is None else formula(lpg, lr, lb)
    if term["role"] == "loss":
        (beta * value).sum().backward()
    else:  # the penalty's return reaches lp through the score function: sum_t sg(G_t) lp_t
        k = value.detach()
        level = "to-go" if "level=to-go" in spec else "sequence" if "level=sequence" in spec else "token"
        ret = {"to-go": k.flip(0).cumsum(0).flip(0), "sequence": k.sum().expand_as(k), "token": k}[level]
        (beta * ret * lpg).sum().backward()
    eps = torch.finfo(dtype).eps
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)
    for i in range(len(s)):
        where = f"{spec} s={s[i].item()!r}"
        v, c = value[i].item(), lpg.grad[i].item()
        assert got.value[0][i] == pytest.approx(v, rel=rtol, abs=atol), where
        scale = abs(v) if term["role"] == "loss" else abs(ret[i].item())
        assert got.coef[0][i] == pytest.approx(c, rel=rtol, abs=atol + 16 * eps * beta * scale), where


@pytest.mark.parametrize("trainer,mapping,fragment", [
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "full"}}},
     "actor_rollout_ref.actor.kl_loss_type='full'"),
    ("verl", {"actor_rollout_ref": {"actor": {"use_kl_loss": "maybe"}}},
     "actor_rollout_ref.actor.use_kl_loss='maybe' is not true or false"),
    ("slime", "--kl-coef 0.1 --kl-loss-coef 0.1", "slime asserts that only one of them is set"),
    ("open-instruct", ["--load_ref_policy", "False"], "load_ref_policy='False' with --beta 0.05"),
    ("verl", ["--use_kl_loss"], "verl is configured by a mapping"),
    ("slime", {"use-kl-loss": True}, "slime is configured by a command line"),
    ("nemo", {}, "unknown trainer 'nemo'"),
])
def test_refusals_name_the_key_and_value(trainer, mapping, fragment):
    with pytest.raises(ValueError, match="from_trainer_config: .*" + fragment.replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+").replace(".", r"\.")):
        klgrad.from_trainer_config(trainer, mapping)


def test_mapping_of_a_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="mapping must be a dict"):
        klgrad.from_trainer_config("verl", 3)
    with pytest.raises(TypeError, match=r"mapping\[1\] must be a str"):
        klgrad.from_trainer_config("slime", ["--kl-coef", 0.1])


def test_warnings_and_defaults():
    got = klgrad.from_trainer_config("verl", {"actor_rollout_ref": {"actor": {
        "use_kl_loss": True, "ppo_epochs": 2, "kl_loss_typo": "k2"}}})
    assert "actor_rollout_ref.actor.kl_loss_type=low_var_kl" in got["defaults_used"]
    text = "\n".join(got["warnings"])
    assert "the forward KL" in text
    assert "ppo_epochs=2: the batches after the first sample from a stale policy" in text
    assert "kl_loss_typo='k2' is not a KL key klgrad reads" in text


def test_trainer_estimator_names_in_python_specs():
    # The spec grammar's trainer names (include/klgrad/presets.hpp), through parse_spec.
    assert str(klgrad.parse_spec("as-loss,preset=verl,kl=low_var_kl")) == "k3-as-loss,preset=verl"
    assert str(klgrad.parse_spec("k3+-as-loss,preset=verl")) == "k3~k2-as-loss,preset=verl"
    assert str(klgrad.parse_spec("3-as-loss,preset=open-instruct")) == \
        "k1-as-loss,preset=open-instruct,is=differentiable"
    with pytest.raises(klgrad.SpecError, match="preset=roll has no estimator 'low_var_kl'"):
        klgrad.parse_spec("low_var_kl-as-loss,preset=roll")
