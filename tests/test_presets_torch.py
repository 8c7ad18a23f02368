"""Each klgrad preset against PyTorch autograd of the trainer's own formula.

The formulas are re-typed from docs/presets.md (our notation, not the trainers' code).
klgrad runs as `klgrad eval` (subprocess, JSON); the binary is $KLGRAD (set by CTest).
Points: ordinary log-ratios and every clamp edge (exactly at, 1e-3 inside and outside),
in float32 and float64, plus the fp32 overflow case lp = -100, lr = 0: where the trainer's
value or gradient is finite klgrad must match it; where it is NaN or inf klgrad must be
finite and count the token as guarded.
"""
import json
import math
import os
import subprocess

import pytest

torch = pytest.importorskip("torch")

KLGRAD = os.environ.get("KLGRAD", os.path.join(os.path.dirname(__file__), "..", "build", "tools", "klgrad"))


# --- the trainers' formulas (per token; lp carries gradient, lr and lb are data) ---------

def low_var_kl(lp, lr):  # verl / EasyR1
    x = torch.clamp(lr - lp, -20, 20)
    return torch.clamp(torch.exp(x) - x - 1, -10, 10)


def verl_k3_plus(lp, lr):
    k2 = 0.5 * (lp - lr) ** 2
    return low_var_kl(lp, lr).detach() + k2 - k2.detach()


def openrlhf(kind):
    def f(lp, lr):
        s = lp.float() - lr.float() if lp.dtype == torch.float32 else lp - lr
        k = {"k1": s, "k2": s ** 2 / 2, "k3": torch.exp(-s) - 1 + s}[kind]
        return torch.clamp(k, -10, 10)
    return f


def nemo(kind):
    def f(lp, lr, lb):
        x = lr - lp
        xc = torch.clamp(x, -20, 20)
        w = torch.exp(lp - lb)
        w = torch.where(x != xc, w.detach(), w)
        k = {"k1": -xc, "k2": xc ** 2 / 2, "k3": torch.exp(xc) - 1 - xc}[kind]
        return torch.clamp(w * k, -10, 10)
    return f


def trl(lp, lr):
    return torch.exp(lr - lp) - (lr - lp) - 1


def trl_bias_corrected(lp, lr, lb):
    return trl(lp, lr) * torch.exp(lp - lb)


def slime_low_var_kl_unbiased(lp, lr, lb):
    s = lp - lr
    return torch.clamp(torch.exp(lp - lb) * (torch.exp(-s) - 1 + s), -10, 10)


def open_instruct(index):
    def f(lp, lr, lb):
        d = torch.clamp(lp - lr, -40, 40)
        ratio = torch.exp(lp - lb)
        return [d, d ** 2 / 2, torch.expm1(-d) + d, ratio * d][index]
    return f


def roll_k3(lp, lr):
    x = lr - lp
    return torch.clamp(torch.exp(x) - x - 1, -10, 10)


# (spec, formula, takes lb, behaviour offset lp - lb)
CASES = [
    ("k3-as-loss,preset=verl", low_var_kl, False, 0.0),
    ("k3-as-loss,preset=easyr1", low_var_kl, False, 0.0),
    ("k3~k2-as-loss,preset=verl", verl_k3_plus, False, 0.0),
    ("k1-as-loss,preset=openrlhf", openrlhf("k1"), False, 0.0),
    ("k2-as-loss,preset=openrlhf", openrlhf("k2"), False, 0.0),
    ("k3-as-loss,preset=openrlhf", openrlhf("k3"), False, 0.0),
    ("k1-as-loss,preset=nemo-rl", nemo("k1"), True, 0.0),
    ("k2-as-loss,preset=nemo-rl", nemo("k2"), True, 0.0),
    ("k3-as-loss,preset=nemo-rl", nemo("k3"), True, 0.0),
    ("k3-as-loss,preset=nemo-rl", nemo("k3"), True, 0.1),  # use_on_policy_kl_approximation
    ("k3-as-loss,preset=trl", trl, False, 0.0),
    ("k3-as-loss,is=differentiable,preset=trl", trl_bias_corrected, True, 0.1),
    ("k3-as-loss,preset=slime", trl, False, 0.0),
    ("k3-as-loss,preset=slime,is=differentiable,clamp=value:-10:10/after-weight",
     slime_low_var_kl_unbiased, True, 0.1),
    ("k1-as-loss,preset=open-instruct", open_instruct(0), True, 0.0),
    ("k2-as-loss,preset=open-instruct", open_instruct(1), True, 0.0),
    ("k3-as-loss,preset=open-instruct", open_instruct(2), True, 0.0),
    ("k1-as-loss,is=differentiable,preset=open-instruct", open_instruct(3), True, 0.1),
    ("k3-as-loss,preset=roll", roll_k3, False, 0.0),
]


def log_ratios():
    out = [-1.3, -0.2, 0.0, 0.4, 2.5, 4.0]
    for edge in (20.0, -20.0, 40.0, -40.0, 10.0, -10.0):
        out += [edge, edge + 1e-3, edge - 1e-3]
    for edge in (math.sqrt(20.0), -math.sqrt(20.0), -2.6109, 10.99998):
        out += [edge + 0.01, edge - 0.01]
    return out


def run_klgrad(spec, lp, lr, lb, dtype):
    batch = {"logp": [lp], "ref": [lr], "behavior": [lb]}
    out = subprocess.run([KLGRAD, "eval", "--spec", spec + ",agg=token-sum", "--type", dtype],
                         input=json.dumps(batch), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("spec,formula,takes_lb,offset", CASES)
def test_preset_matches_autograd(spec, formula, takes_lb, offset, dtype):
    tdtype = torch.float32 if dtype == "float" else torch.float64
    s = torch.tensor(log_ratios(), dtype=torch.float64)
    lp = torch.full_like(s, -3.0).to(tdtype)
    lr = (torch.full_like(s, -3.0) - s).to(tdtype)  # rounded to the working precision
    lb = (lp.double() - offset).to(tdtype)
    got = run_klgrad(spec, lp.tolist(), lr.tolist(), lb.tolist(), dtype)
    lpg = lp.clone().requires_grad_(True)
    value = formula(lpg, lr, lb) if takes_lb else formula(lpg, lr)
    value.sum().backward()
    rtol, atol = (1e-4, 1e-5) if dtype == "float" else (1e-10, 1e-12)
    eps = torch.finfo(tdtype).eps
    assert got["guarded"] == 0
    for i in range(len(s)):
        v, c = value[i].item(), lpg.grad[i].item()
        # A differentiable weight adds w k to w k': both sides cancel e^-s against itself
        # (w (k3 + k3') = w s), so the coefficient is only good to a few ulp of the value.
        atol_c = atol + 16 * eps * abs(v)
        where = f"{spec} {dtype} s={(lp[i] - lr[i]).item()!r}"
        assert got["value"][0][i] == pytest.approx(v, rel=rtol, abs=atol), where
        assert got["coef"][0][i] == pytest.approx(c, rel=rtol, abs=atol_c), where


@pytest.mark.parametrize("spec,formula,takes_lb,offset", CASES)
def test_fp32_overflow_lp_minus_100(spec, formula, takes_lb, offset):
    lp = torch.tensor([-100.0], dtype=torch.float32)
    lr = torch.tensor([0.0], dtype=torch.float32)
    lb = lp - offset
    got = run_klgrad(spec, lp.tolist(), lr.tolist(), lb.tolist(), "float")
    lpg = lp.clone().requires_grad_(True)
    value = formula(lpg, lr, lb) if takes_lb else formula(lpg, lr)
    value.sum().backward()
    v, c = value[0].item(), lpg.grad[0].item()
    kv, kc = got["value"][0][0], got["coef"][0][0]
    assert math.isfinite(kv) and math.isfinite(kc)
    if math.isfinite(v) and math.isfinite(c):
        assert kv == pytest.approx(v, rel=1e-5)
        assert kc == pytest.approx(c, rel=1e-5, abs=1e-30)
    else:
        # The trainer overflows (NaN gradient through a clamp after exp, or inf): klgrad
        # keeps the guarded finite result and counts it; a finite trainer value still matches.
        assert got["guarded"] == 1
        if math.isfinite(v):
            assert kv == pytest.approx(v, rel=1e-5)
