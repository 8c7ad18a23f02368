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


# --- aggregation: each trainer's normaliser over a batch, with its epsilons and scale -----
#
# The trainers' aggregation functions re-typed from docs/presets.md (our notation), applied
# to a padded batch of three sequences (3, 0 and 5 valid tokens: one is empty) and
# differentiated by autograd; klgrad gets the same spec a preset gives (with agg-scale for
# the trainer's constant factor) and the trainer's counts through --tokens / --sequences.
# In float64 the trainers' "+ 1e-8" moves the gradient by 1e-8 / n relative, far above the
# tolerance, so it is checked; in float32 it rounds away in both.

EPS = 1e-8
D, G, P = 8, 4, 2  # data-parallel size, gradient-accumulation steps, processes


def k3(lp, lr):  # unclamped (the batch keeps every clamp inactive)
    return torch.exp(lr - lp) - (lr - lp) - 1


def nemo_weighted_k3(lp, lr):  # NeMo-RL's default weight exp(lp - sg lp)
    return nemo("k3")(lp, lr, lp.detach())


def verl_agg(mode, dp, n_global=None, b_global=None, scale_factor=None):
    def agg(k, m):
        if mode == "token-mean":
            return (k * m).sum() / n_global * dp
        n = m.sum(-1)
        nonempty = (n > 0).to(k.dtype)
        if mode == "seq-mean-token-mean":
            seq = (k * m).sum(-1) / (n + EPS)
            return (seq * nonempty).sum() / b_global * dp
        seq = (k * m).sum(-1)
        loss = (seq * nonempty).sum() / b_global * dp
        return loss / scale_factor if mode == "seq-mean-token-sum-norm" else loss
    return agg


def roll_agg(mode, n_global=None, b_global=None, scale=1.0):
    def agg(k, m):
        n = m.sum(-1)
        valid = (n > 0).to(k.dtype)
        if mode == "token-mean":
            return (k * m).sum() / n_global * scale
        if mode == "seq-mean-token-mean":
            seq = torch.where(n > 0, (k * m).sum(-1) / (n + EPS), torch.zeros_like(n))
            return (seq * valid).sum() / (b_global + EPS) * scale
        if mode == "seq-mean-token-sum":
            return ((k * m).sum(-1) * valid).sum() / (b_global + EPS) * scale
        return ((k * m).sum(-1) * valid).sum() / m.shape[-1] * scale  # its "sum-norm": / L only
    return agg


def nemo_agg(token_level, n_global=None, b_global=None, dp_cp=1.0):
    def agg(k, m):
        if token_level:
            return (k * m).sum() / (n_global + EPS) * dp_cp
        seq = (k * m).sum(-1) / (m.sum(-1) + EPS)
        return seq.sum() / (b_global + EPS) * dp_cp  # every row is a valid sample here
    return agg


def trl_agg(loss_type, max_completion_length=512, num_items=None):
    def agg(k, m):
        if loss_type == "grpo":
            return ((k * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean() / G
        if loss_type == "bnpo":
            return (k * m).sum() / m.sum().clamp(min=1.0) / G
        if loss_type == "dr_grpo":
            return (k * m).sum() / (k.size(0) * max_completion_length) / G
        if loss_type == "dapo":
            return (k * m).sum() / (max(num_items, 1.0) / P)
        return (k * m).sum(-1).mean() / G  # luspo after TRL PR #6654
    return agg


# (what, spec, klgrad counts, per-token KL, trainer aggregation)
AGG_CASES = [
    ("verl token-mean", "k3-as-loss,preset=verl,agg-scale=8", ["--tokens", "40"], k3,
     verl_agg("token-mean", D, n_global=40)),
    ("verl seq-mean-token-mean", "k3-as-loss,preset=verl,agg=seq-mean-token-mean,agg-scale=8",
     ["--sequences", "6"], k3, verl_agg("seq-mean-token-mean", D, b_global=6)),
    ("verl seq-mean-token-sum-norm (L = padded width)",
     "k3-as-loss,preset=verl,agg=seq-mean-token-sum-norm,agg-norm=5,agg-scale=8",
     ["--sequences", "6"], k3, verl_agg("seq-mean-token-sum-norm", D, b_global=6, scale_factor=5)),
    ("ROLL seq-mean-token-mean (apply_loss_scale D G)", "k3-as-loss,preset=roll,agg-scale=32",
     ["--sequences", "5"], roll_k3, roll_agg("seq-mean-token-mean", b_global=5, scale=D * G)),
    ("ROLL seq-mean-token-sum", "k3-as-loss,preset=roll,agg=seq-mean-token-sum",
     ["--sequences", "5"], roll_k3, roll_agg("seq-mean-token-sum", b_global=5)),
    ("ROLL token-mean", "k3-as-loss,preset=roll,agg=token-mean", ["--tokens", "40"], roll_k3,
     roll_agg("token-mean", n_global=40)),
    ("ROLL / verl Jan-2026 seq-mean-token-sum-norm", "k3-as-loss,preset=roll,agg=token-sum-norm,agg-norm=5",
     [], roll_k3, roll_agg("sum-norm")),
    ("NeMo-RL token level (dp cp = 2)", "k3-as-loss,preset=nemo-rl,agg-scale=2", ["--tokens", "40"],
     nemo_weighted_k3, nemo_agg(True, n_global=40, dp_cp=2.0)),
    ("NeMo-RL sequence level", "k3-as-loss,preset=nemo-rl,agg=seq-mean-token-mean",
     ["--sequences", "3"], nemo_weighted_k3, nemo_agg(False, b_global=3)),
    ("TRL grpo", "k3-as-loss,preset=trl,agg=seq-mean-token-mean,agg-scale=0.25",
     ["--sequences", "3"], trl, trl_agg("grpo")),
    ("TRL bnpo", "k3-as-loss,preset=trl,agg-scale=0.25", [], trl, trl_agg("bnpo")),
    ("TRL dr_grpo", "k3-as-loss,preset=trl,agg=seq-mean-token-sum-norm,agg-norm=512,agg-scale=0.25",
     ["--sequences", "3"], trl, trl_agg("dr_grpo")),
    ("TRL dapo", "k3-as-loss,preset=trl,agg-scale=2", ["--tokens", "40"], trl,
     trl_agg("dapo", num_items=40.0)),
    ("TRL luspo (PR #6654)", "k3-as-loss,preset=trl,agg=seq-mean-token-sum,agg-scale=0.25",
     ["--sequences", "3"], trl, trl_agg("luspo")),
]

LP = [[-1.2, -0.7, -2.1, -0.4, -3.0], [-0.9, -1.5, -0.3, -1.1, -0.8], [-2.2, -0.6, -1.4, -0.9, -0.5]]
LR = [[-1.0, -0.9, -1.8, -0.4, -2.5], [-1.1, -1.4, -0.2, -1.0, -0.7], [-1.7, -0.9, -1.9, -0.3, -0.2]]
MASK = [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
BETA = 0.04


@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("what,spec,counts,kl,agg", AGG_CASES, ids=[c[0] for c in AGG_CASES])
def test_aggregation_matches_autograd(what, spec, counts, kl, agg, dtype):
    tdtype = torch.float32 if dtype == "float" else torch.float64
    lp = torch.tensor(LP, dtype=tdtype)
    lr = torch.tensor(LR, dtype=tdtype)
    m = torch.tensor(MASK, dtype=tdtype)
    batch = {"logp": lp.tolist(), "ref": lr.tolist(), "behavior": lp.tolist(), "mask": MASK}
    out = subprocess.run([KLGRAD, "eval", "--spec", spec + ",beta=0.04", "--type", dtype] + counts,
                         input=json.dumps(batch), capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    lpg = lp.clone().requires_grad_(True)
    loss = BETA * agg(kl(lpg, lr), m)
    loss.backward()
    rtol = 1e-5 if dtype == "float" else 1e-12
    assert got["guarded"] == 0
    assert got["loss"] == pytest.approx(loss.item(), rel=rtol), what
    for b in range(3):
        for t in range(5):
            c = lpg.grad[b][t].item()
            assert got["coef"][b][t] == pytest.approx(c, rel=rtol, abs=1e-300), f"{what} {dtype} b={b} t={t}"


# --- TRL's bias-corrected KL with sequence-level importance sampling ----------------------
#
# use_bias_correction_kl with importance_sampling_level="sequence": every token's k3 is
# multiplied by w_seq = exp(mean over the sequence's valid tokens of lp - lb), which carries
# gradient to every token of the sequence; the batch is averaged as loss_type=dapo
# (sum / N_tokens). Behaviour log-probs differ from lp here, so the weights are not 1.

LB = [[-1.1, -0.8, -2.4, -0.4, -3.0], [-0.9, -1.5, -0.3, -1.1, -0.8], [-2.0, -0.9, -1.2, -0.7, -0.8]]


def trl_sequence_weighted(lp, lr, lb, m):
    w = torch.exp(((lp - lb) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0))
    return trl(lp, lr) * w


@pytest.mark.parametrize("dtype", ["float", "double"])
def test_trl_sequence_level_bias_correction_matches_autograd(dtype):
    tdtype = torch.float32 if dtype == "float" else torch.float64
    lp = torch.tensor(LP, dtype=tdtype)
    lr = torch.tensor(LR, dtype=tdtype)
    lb = torch.tensor(LB, dtype=tdtype)
    m = torch.tensor(MASK, dtype=tdtype)
    spec = "k3-as-loss,is=differentiable,is-level=sequence-mean,preset=trl,beta=0.04"
    batch = {"logp": lp.tolist(), "ref": lr.tolist(), "behavior": lb.tolist(), "mask": MASK}
    out = subprocess.run([KLGRAD, "eval", "--spec", spec, "--type", dtype],
                         input=json.dumps(batch), capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    lpg = lp.clone().requires_grad_(True)
    per_token = trl_sequence_weighted(lpg, lr, lb, m)
    loss = BETA * (per_token * m).sum() / m.sum()
    loss.backward()
    rtol = 1e-5 if dtype == "float" else 1e-12
    assert got["loss"] == pytest.approx(loss.item(), rel=rtol)
    for b in range(3):
        for t in range(5):
            assert got["coef"][b][t] == pytest.approx(lpg.grad[b][t].item(), rel=rtol, abs=1e-300), \
                f"{dtype} b={b} t={t}"
            if MASK[b][t]:
                assert got["value"][b][t] == pytest.approx(per_token[b][t].item(), rel=rtol)
