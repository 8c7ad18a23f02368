"""klgrad.testing against the trainers' own KL terms, written in torch from their code.

Each trainer function below restates, in our own notation, the per-token KL term of a
trainer's source at the commit named in its comment (read with the search tool's fetch;
docs/presets.md has the full reading). fn(lp, lr, old): lp carries the gradient, lr is the
reference log-prob, old the behaviour log-prob the trainer's importance weight uses.
identify must name the trainer's klgrad preset among its matches; wrong functions must match
nothing and say which spec comes nearest and where it differs.
"""
import re
import time

import pytest

torch = pytest.importorskip("torch")
klgrad = pytest.importorskip("klgrad")
testing = pytest.importorskip("klgrad.testing")


def k3_of_x(x):  # x = lr - lp, as the trainers write it
    return torch.exp(x) - x - 1


# verl-project/verl 1dda039b (2026-08-22), verl/trainer/ppo/core_algos.py, kl_penalty_forward
# "low_var_kl": x = lr - lp clamped to [-20, 20] before exp, the result clamped to [-10, 10].
def verl_low_var_kl(lp, lr, old):
    x = torch.clamp(lr - lp, -20, 20)
    return torch.clamp(k3_of_x(x), -10, 10)


# Same file, kl_penalty with a "+" name ("k3+"): the forward value of low_var_kl, the gradient
# of k2 = (lp - lr)^2 / 2 through a straight-through sum.
def verl_k3_plus(lp, lr, old):
    k2 = 0.5 * (lp - lr) ** 2
    return verl_low_var_kl(lp, lr, old).detach() + k2 - k2.detach()


# OpenRLHF/OpenRLHF 3c3be623 (2026-08-13), openrlhf/models/utils.py, compute_approx_kl "k3":
# s = lp - lr (cast to float32 there), exp(-s) - 1 + s clamped to [-10, 10], no log-ratio
# clamp. `cast` reproduces the float32 cast for the float32 test.
def openrlhf_k3(lp, lr, old, cast=False):
    s = lp.float() - lr.float() if cast else lp - lr
    return torch.clamp(torch.exp(-s) - 1 + s, -10, 10)


# huggingface/trl f2cd5771 (2026-07-24), trl/trainer/grpo_trainer.py, _compute_loss:
# per_token_kl = exp(lr - lp) - (lr - lp) - 1, times coef_1 = exp(lp - old) (gradient kept)
# with use_bias_correction_kl and importance_sampling_level="token".
def trl_k3(lp, lr, old):
    return k3_of_x(lr - lp)


def trl_bias_corrected_k3(lp, lr, old):
    return trl_k3(lp, lr, old) * torch.exp(lp - old)


# NVIDIA-NeMo/RL 7ea279ab (2026-08-22), nemo_rl/algorithms/utils.py calculate_kl with its
# defaults (input clamp 20, output clamp 10): x = lr - lp clamped to [-20, 20], the weight
# detached where that clamp is active, w * k3(x) clamped to [-10, 10]; the weight from
# nemo_rl/algorithms/loss/loss_functions.py ClippedPGLossFn: exp(lp - sg(lp)) by default,
# exp(lp - lb_gen) with use_on_policy_kl_approximation, both through nan_to_num.
def nemo_k3(lp, lr, weight):
    x = lr - lp
    xc = torch.clamp(x, -20, 20)
    w = torch.where(x == xc, weight, weight.detach())
    return torch.clamp(w * k3_of_x(xc), -10, 10)


def nemo_default_k3(lp, lr, old):  # ignores old: the default weight is exp(lp - sg lp)
    return nemo_k3(lp, lr, torch.nan_to_num(torch.exp(lp - lp.detach()), nan=0.0, posinf=0.0))


def nemo_on_policy_approximation_k3(lp, lr, old):
    return nemo_k3(lp, lr, torch.nan_to_num(torch.exp(lp - old), nan=0.0, posinf=0.0))


# THUDM/slime 624b824a (2026-08-21), slime/utils/ppo_utils.py, compute_approx_kl
# "low_var_kl": s = lp - lr (float32 cast there), k3 = exp(-s) - 1 + s, times the importance
# ratio exp(lp - old) if --use-unbiased-kl, and only then clamped to [-10, 10].
def slime_low_var_kl(lp, lr, old):
    s = lp - lr
    return torch.clamp(torch.exp(-s) - 1 + s, -10, 10)


def slime_low_var_kl_unbiased(lp, lr, old):
    s = lp - lr
    return torch.clamp(torch.exp(lp - old) * (torch.exp(-s) - 1 + s), -10, 10)


# Wrong functions: k3 clamped at 5 instead of 10, and k3 of the flipped log-ratio.
def k3_clamped_at_5(lp, lr, old):
    return torch.clamp(k3_of_x(torch.clamp(lr - lp, -20, 20)), -5, 5)


def k3_sign_flipped(lp, lr, old):
    return torch.clamp(k3_of_x(torch.clamp(lp - lr, -20, 20)), -10, 10)


def canonical(text):
    return str(klgrad.Spec(text))


def names(matches):
    return [m.spec for m in matches]


TRAINERS = [
    ("verl low_var_kl", verl_low_var_kl, "k3-as-loss,preset=verl"),
    ("verl k3+", verl_k3_plus, "k3~k2-as-loss,preset=verl"),
    ("OpenRLHF k3", openrlhf_k3, "k3-as-loss,preset=openrlhf"),
    ("TRL k3", trl_k3, "k3-as-loss,preset=trl"),
    ("TRL bias-corrected k3", trl_bias_corrected_k3, "k3-as-loss,is=differentiable,preset=trl"),
    ("NeMo-RL k3, use_on_policy_kl_approximation", nemo_on_policy_approximation_k3,
     "k3-as-loss,preset=nemo-rl"),
    ("slime low_var_kl", slime_low_var_kl,
     "k3-as-loss,preset=slime,clamp=value:-10:10/after-weight"),
    ("slime low_var_kl, use-unbiased-kl", slime_low_var_kl_unbiased,
     "k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight"),
]


@pytest.mark.parametrize("what,fn,spec", TRAINERS, ids=[t[0] for t in TRAINERS])
def test_identify_names_the_trainers_preset(what, fn, spec):
    matches = testing.identify(fn)
    assert canonical(spec) in names(matches), f"{what}: {matches!r}"
    assert all(m.scope == "on- and off-policy" for m in matches)


@pytest.mark.parametrize("what,fn,spec", TRAINERS, ids=[t[0] for t in TRAINERS])
def test_assert_matches_passes_on_the_trainers_term(what, fn, spec):
    testing.assert_matches(fn, spec + ",beta=0.001")  # beta and agg are replaced: per token


def test_nemo_default_weight_matches_on_policy_only():
    # exp(lp - sg lp) is NeMo-RL's weight with behavior = logp: klgrad's nemo-rl preset
    # agrees where old == logp, and no spec agrees off-policy (the term ignores old).
    matches = testing.identify(nemo_default_k3)
    assert canonical("k3-as-loss,preset=nemo-rl") in names(matches), repr(matches)
    assert all(m.scope == "on-policy only" for m in matches)
    assert "on-policy only" in repr(matches)
    testing.assert_matches(nemo_default_k3, "k3-as-loss,preset=nemo-rl",
                           points=[p for p in testing.grid() if p[2] == p[0]])


def test_matches_carry_the_explain_verdict():
    matches = testing.identify(verl_low_var_kl)
    m = matches[names(matches).index(canonical("k3-as-loss,preset=verl"))]
    assert m.explain == klgrad.explain(m.spec)
    assert m.on_policy.startswith(m.explain["on_policy"]["token"]["follows"] + " (one state)")
    assert m.off_policy.startswith(m.explain["off_policy"]["token"]["follows"] + " (one state)")
    assert "on-policy follows" in repr(m) and m.spec in repr(m)


def test_every_match_of_low_var_kl_is_a_clamped_k3_loss():
    # The presets agreeing with verl's low_var_kl token by token (verl, easyr1, openrlhf, roll,
    # slime's low_var_kl, nemo-rl with no weight) are all k3 as a loss with a +-10 value clamp;
    # the unclamped k3 and every weighted term differ somewhere on the grid.
    for m in testing.identify(verl_low_var_kl):
        assert m.spec.startswith("k3-as-loss,preset="), m.spec
        assert "differentiable" not in m.spec and "detached" not in m.spec, m.spec


@pytest.mark.parametrize("fn,estimator", [(k3_clamped_at_5, "k3"), (k3_sign_flipped, None)],
                         ids=["k3 clamped at 5", "k3 with the log-ratio's sign flipped"])
def test_wrong_function_matches_nothing_and_says_why(fn, estimator):
    matches = testing.identify(fn)
    assert list(matches) == [] and not matches
    nearest = matches.nearest
    assert nearest is not None and nearest.count > 0
    if estimator:
        assert nearest.spec.startswith(estimator)
    s, lw, value, kvalue, grad, kgrad, what = nearest.worst
    assert what and (value != pytest.approx(kvalue) or grad != pytest.approx(kgrad))
    text = repr(matches)
    assert text.startswith("Matches([], no klgrad spec agrees") and nearest.spec in text
    assert f"of {nearest.points} points differ" in text and "worst at s=" in text
    assert "log-ratio s" in str(matches)  # the table of the first mismatches


def test_assert_matches_message_names_points_values_and_gradients():
    with pytest.raises(AssertionError) as info:
        testing.assert_matches(k3_clamped_at_5, "k3-as-loss,preset=verl,beta=0.04")
    message = str(info.value)
    assert "fn differs from klgrad spec 'k3-as-loss,preset=verl,beta=0.04'" in message
    assert "klgrad side: 'k3-as-loss,preset=verl,agg=token-sum'" in message
    lines = message.splitlines()
    header = next(i for i, line in enumerate(lines) if "log-ratio s" in line)
    assert re.search(r"log-ratio s\s+log-weight\s+value: fn\s+klgrad\s+d/dlogp: fn\s+klgrad coef"
                     r"\s+differs", lines[header])
    rows = [line.split() for line in lines[header + 1:header + 6]]
    assert len(rows) == 5
    # The first mismatch of the grid: s = -5, where k3 = e^5 - 6 = 142.4 is clamped to 5 by
    # fn and to 10 by klgrad, both with gradient 0.
    s, lw, value, kvalue, grad, kgrad = map(float, rows[0][:6])
    assert (s, lw, value, kvalue, grad, kgrad) == (-5.0, 0.0, 5.0, 10.0, 0.0, 0.0)
    assert rows[0][6:] == ["value"]
    counted = re.search(r"at (\d+) of (\d+) points", message)
    assert 0 < int(counted.group(1)) < int(counted.group(2)) == len(testing.grid())


def test_assert_matches_reports_a_gradient_mismatch():
    # verl's k3+ has low_var_kl's value with k2's gradient: against plain low_var_kl only the
    # gradient differs.
    with pytest.raises(AssertionError, match=r"gradient"):
        testing.assert_matches(verl_k3_plus, "k3-as-loss,preset=verl")


def test_float32_with_the_trainers_cast():
    testing.assert_matches(lambda lp, lr, old: openrlhf_k3(lp, lr, old, cast=True),
                           "k3-as-loss,preset=openrlhf", dtype=torch.float32, rtol=1e-5)
    # In float64 the float32 cast costs 8 digits: rtol=1e-9 catches it.
    with pytest.raises(AssertionError):
        testing.assert_matches(lambda lp, lr, old: openrlhf_k3(lp, lr, old, cast=True).double(),
                               "k3-as-loss,preset=openrlhf")


def test_overflow_is_excused_only_where_klgrad_guards():
    # TRL's unclamped k3 overflows to inf (value) and -inf (gradient) beyond s = -709.78 in
    # float64, where klgrad's guard bounds the log-ratio: those points are not compared and
    # the rest must match.
    testing.assert_matches(trl_k3, "k3-as-loss,preset=trl")

    def nan_at_zero(lp, lr, old):  # a NaN where klgrad's guard does nothing is a mismatch
        k = trl_k3(lp, lr, old)
        return torch.where(lp == lr, torch.full_like(k, float("nan")), k)

    with pytest.raises(AssertionError, match="nan"):
        testing.assert_matches(nan_at_zero, "k3-as-loss,preset=trl")


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="one value per token"):
        testing.assert_matches(lambda lp, lr, old: (lp - lr).sum(), "k1-as-loss")
    with pytest.raises(TypeError, match="torch.Tensor"):
        testing.assert_matches(lambda lp, lr, old: 0.0, "k1-as-loss")
    with pytest.raises(ValueError, match="level=sequence"):
        testing.assert_matches(trl_k3, "k3-as-loss,level=sequence")
    with pytest.raises(klgrad.SpecError):
        testing.assert_matches(trl_k3, "k4-as-loss")
    with pytest.raises(ValueError, match="dtype"):
        testing.assert_matches(trl_k3, "k3-as-loss", dtype=torch.float16)


def test_user_points_extend_the_grid():
    extra = [(-1.0, -1.5, -1.2), (-0.3, -0.3, -0.3)]  # off-policy; s = 0 on-policy
    testing.assert_matches(trl_bias_corrected_k3, "k3-as-loss,is=differentiable",
                           points=testing.grid() + extra)
    with pytest.raises(AssertionError, match="at 1 of 2 points"):
        testing.assert_matches(trl_k3, "k3-as-loss,is=differentiable", points=extra)


def test_candidates_cover_estimators_placements_weights_and_presets():
    texts = testing.candidates()
    assert len(texts) == len(set(texts))
    for spec in ("k1-in-reward", "abs-both,is=detached", "k2~k3-as-loss,is=differentiable",
                 "k3-as-loss,preset=nemo-rl", "k1-as-loss,preset=open-instruct,is=differentiable",
                 "k3~k2-both,preset=verl,is=detached"):
        assert canonical(spec) in texts, spec
    assert not any("preset=trl" in t and "in-reward" in t for t in texts)  # TRL has none


def test_identify_is_fast():
    start = time.perf_counter()
    testing.identify(verl_low_var_kl)
    assert time.perf_counter() - start < 5.0  # 0.5 s measured on one core
