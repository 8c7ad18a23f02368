"""Tests of `klgrad eval` on logits input: JSON in, JSON out, exit status 2 with a message on
bad input. Usage: /usr/bin/python3 test_eval_logits.py PATH/TO/klgrad.

Expected numbers are computed here in float64 with numpy, independently of klgrad: values
from log_softmax and the definitions of the divergences, gradients by central differences
of those values (never from klgrad's closed forms), aggregation weights from SPEC section 6.
"""
import json
import subprocess
import sys

import numpy as np

KLGRAD = sys.argv[1]
passes = 0
failures = 0


def check(name, condition, detail=""):
    global passes, failures
    if condition:
        passes += 1
    else:
        failures += 1
        print(f"FAILED: {name}" + (f"\n  {detail}" if detail else ""))


def run(doc, *args):
    """klgrad eval ARGS with doc (a dict, or text) on stdin: (exit status, output, stderr)."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    p = subprocess.run([KLGRAD, "eval", *args], input=text, capture_output=True, text=True)
    out = json.loads(p.stdout) if p.returncode == 0 else None
    return p.returncode, out, p.stderr


def arr(x):
    """Output lists to float arrays: "inf" / "-inf" strings and null (NaN) decoded."""
    def conv(v):
        if isinstance(v, list):
            return [conv(e) for e in v]
        if v is None:
            return float("nan")
        if isinstance(v, str):
            return float(v)
        return v
    return np.array(conv(x), dtype=float)


def jsonable(a):
    """float array to JSON lists: -inf as "-inf", NaN as null."""
    if isinstance(a, np.ndarray):
        a = a.tolist()
    if isinstance(a, list):
        return [jsonable(e) for e in a]
    if a != a:
        return None
    if a == float("-inf"):
        return "-inf"
    return a


def close(got, want, rtol=1e-12, atol=1e-12):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    return got.shape == want.shape and bool(
        np.all(np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)))


def why(got, want):
    return f"got {np.asarray(got).tolist()}\n  want {np.asarray(want).tolist()}"


# ---- the oracle: float64 numpy ----------------------------------------------------------

def log_softmax(x):
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def kl(la, lb):
    """sum exp(la) (la - lb), terms of zero probability dropped."""
    pa = np.exp(la)
    with np.errstate(invalid="ignore"):
        return float(np.sum(np.where(pa > 0, pa * (la - lb), 0.0)))


def divergence(name, z, zr, tau=1.0, lam=0.5, k=0):
    lp, lr = log_softmax(z / tau), log_softmax(zr / tau)
    if name == "reverse-kl":
        return kl(lp, lr)
    if name == "forward-kl":
        return kl(lr, lp)
    if name == "jensen-shannon":
        with np.errstate(divide="ignore"):  # M = 0 where both are 0: dropped terms
            lm = np.log(lam * np.exp(lr) + (1 - lam) * np.exp(lp))
        return lam * kl(lr, lm) + (1 - lam) * kl(lp, lm)
    if name == "forward-kl-top-k":
        top = top_k(zr, k)
        lt = log_softmax(zr[top] / tau)  # the reference renormalised over K
        return kl(lt, lp[top])
    if name == "reverse-kl-top-k":
        top = top_k(z, k)  # the policy's top k, the policy renormalised over K
        return kl(log_softmax(z[top] / tau), lr[top])
    if name in ("forward-kl-top-k-tail", "reverse-kl-top-k-tail"):
        # k + 1 bins: K (the chooser's top k) and the rest, the tail masses summed directly
        reverse = name.startswith("reverse")
        top = top_k(z if reverse else zr, k)
        rest = [i for i in range(len(z)) if i not in top]
        la, lb = (lp, lr) if reverse else (lr, lp)
        with np.errstate(divide="ignore"):
            tail = lambda l: np.log(np.sum(np.exp(l[rest])))
            return kl(np.append(la[top], tail(la)), np.append(lb[top], tail(lb)))
    raise ValueError(name)


def top_k(x, k):
    """The k largest logits of a row, descending; ties to the smaller index."""
    return sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]


def numeric_gradient(f, z, h=1e-5):
    g = np.zeros_like(z)
    for j in range(len(z)):
        if np.isinf(z[j]):
            continue  # a -inf logit has probability 0 and no gradient
        zp, zm = z.copy(), z.copy()
        zp[j] += h
        zm[j] -= h
        g[j] = (f(zp) - f(zm)) / (2 * h)
    return g


def weights(mask, agg, beta, norm=0.0, eps=0.0, seq_eps=0.0, scale=1.0, tokens=None,
            sequences=None):
    """beta * a_{b,t} per position (0 where masked), SPEC section 6."""
    n = mask.sum(axis=1)
    n_tokens = (tokens if tokens is not None else n.sum()) + eps
    n_seq = (sequences if sequences is not None else (n > 0).sum()) + eps
    a = {"token-mean": lambda nb: 1 / n_tokens, "token-sum": lambda nb: 1.0,
         "seq-mean-token-sum": lambda nb: 1 / n_seq,
         "seq-mean-token-mean": lambda nb: 1 / (n_seq * (nb + seq_eps)),
         "seq-mean-token-sum-norm": lambda nb: 1 / (n_seq * norm)}[agg]
    return np.array([[beta * scale * a(n[b]) if mask[b, t] else 0.0
                      for t in range(mask.shape[1])]
                     for b in range(mask.shape[0])])


def expected(name, z, zr, mask, agg="token-mean", beta=1.0, tau=1.0, lam=0.5, k=0, **counts):
    """value (B x T), grad (B x T x V), loss and mean for a padded batch."""
    B, T, V = z.shape
    w = weights(mask, agg, beta, **counts)
    value, grad = np.zeros((B, T)), np.zeros((B, T, V))
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            f = lambda x: divergence(name, x, zr[b, t], tau, lam, k)
            value[b, t] = f(z[b, t])
            grad[b, t] = w[b, t] * numeric_gradient(f, z[b, t].copy())
    valid = mask.astype(bool)
    return value, grad, float(np.sum(w * value)), float(value[valid].mean())


def check_result(name, out, want, grad_atol=1e-8, value_rtol=1e-12):
    value, grad, loss, mean = want
    check(f"{name}: value", close(arr(out["value"]), value, rtol=value_rtol, atol=1e-14),
          why(out["value"], value))
    check(f"{name}: grad (central differences)", close(arr(out["grad"]), grad, rtol=1e-6,
                                                       atol=grad_atol),
          why(out["grad"], grad))
    check(f"{name}: loss", close(out["loss"], loss, rtol=value_rtol), f"{out['loss']} vs {loss}")
    check(f"{name}: mean", close(out["mean"], mean, rtol=value_rtol), f"{out['mean']} vs {mean}")


rng = np.random.default_rng(7)

# ---- padded B x T x V with a mask: every divergence, aggregation, temperature -----------

B, T, V = 2, 3, 5
z = rng.normal(0, 2, (B, T, V))
zr = rng.normal(0, 2, (B, T, V))
mask = np.array([[1, 1, 0], [1, 0, 0]])
doc_z, doc_zr = jsonable(z), jsonable(zr)
doc_z[0][2] = [None, "-inf", 1e300, None, 0.0]  # a masked row is never read
doc_zr[1][2] = [None] * V
base = {"logits": doc_z, "ref_logits": doc_zr, "mask": mask.tolist()}

for name, extra, spec, kw in [
    ("reverse-kl", {}, [], {}),
    ("forward-kl", {"temperature": 1.7}, ["--spec", "agg=seq-mean-token-mean,beta=0.1"],
     {"tau": 1.7, "agg": "seq-mean-token-mean", "beta": 0.1}),
    ("jensen-shannon", {"lambda": 0.3}, ["--spec", "agg=token-sum"],
     {"lam": 0.3, "agg": "token-sum"}),
    ("jensen-shannon", {}, ["--spec", "agg=seq-mean-token-sum-norm,agg-norm=4,beta=2"],
     {"agg": "seq-mean-token-sum-norm", "norm": 4.0, "beta": 2.0}),
    ("forward-kl-top-k", {"top_k": 2}, ["--spec", "agg=seq-mean-token-sum"],
     {"k": 2, "agg": "seq-mean-token-sum"}),
    ("reverse-kl-top-k", {"top_k": 2, "temperature": 0.7}, ["--spec", "agg=token-sum"],
     {"k": 2, "tau": 0.7, "agg": "token-sum"}),
    ("forward-kl-top-k-tail", {"top_k": 2, "temperature": 1.3}, [],
     {"k": 2, "tau": 1.3}),
    ("reverse-kl-top-k-tail", {"top_k": 3}, ["--spec", "agg=seq-mean-token-mean,beta=0.5"],
     {"k": 3, "agg": "seq-mean-token-mean", "beta": 0.5}),
    ("reverse-kl", {}, ["--spec", "agg=seq-mean-token-mean,agg-eps=0.5,agg-seq-eps=0.25,"
                                  "agg-scale=3"],
     {"agg": "seq-mean-token-mean", "eps": 0.5, "seq_eps": 0.25, "scale": 3.0}),
]:
    label = f"padded {name} {' '.join(spec)} {extra}"
    rc, out, err = run({**base, "divergence": name, **extra}, *spec)
    check(f"{label}: exits 0", rc == 0, err)
    if rc != 0:
        continue
    check_result(label, out, expected(name, z, zr, mask, **kw))
    check(f"{label}: counts", out["rows"] == 3 and out["sequences"] == 2, str(out))
    check(f"{label}: names the divergence", out["divergence"] == name)
    check(f"{label}: masked rows are zero", arr(out["value"])[0, 2] == 0 and
          not arr(out["grad"])[1, 1:].any())

# top-k indices: descending reference logit, -1 in masked rows.
rc, out, err = run({**base, "divergence": "forward-kl-top-k", "top_k": 3})
want = [[top_k(zr[b, t], 3) if mask[b, t] else [-1] * 3 for t in range(T)] for b in range(B)]
check("top-k indices", rc == 0 and out["indices"] == want, f"{out and out.get('indices')} vs {want}")
rc, out, err = run({**base, "divergence": "reverse-kl-top-k-tail", "top_k": 3})
want = [[top_k(z[b, t], 3) if mask[b, t] else [-1] * 3 for t in range(T)] for b in range(B)]
check("reverse top-k indices: the policy's", rc == 0 and out["indices"] == want,
      f"{out and out.get('indices')} vs {want}")

# Global counts (a data-parallel shard): token-mean divides by --tokens.
rc, out, err = run(base, "--tokens", "12", "--sequences", "4")
want = expected("reverse-kl", z, zr, mask, tokens=12, sequences=4)
check("--tokens 12: exits 0", rc == 0, err)
if rc == 0:
    check_result("--tokens 12", out, want)

# No mask: every row valid, T positions per sequence (seq-mean-token-mean needs n_b = T).
rc, out, err = run({"logits": jsonable(z), "ref_logits": jsonable(zr)},
                   "--spec", "agg=seq-mean-token-mean")
check("padded without mask: exits 0", rc == 0, err)
if rc == 0:
    check_result("padded without mask", out,
                 expected("reverse-kl", z, zr, np.ones((B, T), int), agg="seq-mean-token-mean"))
    check("padded without mask: counts", out["rows"] == 6 and out["sequences"] == 2, str(out))

# float computation: the same within float precision.
rc, out, err = run({**base, "divergence": "forward-kl"}, "--type", "float")
value, _, loss, _ = expected("forward-kl", z, zr, mask)
check("--type float", rc == 0 and close(arr(out["value"]), value, rtol=1e-5, atol=1e-6) and
      close(out["loss"], loss, rtol=1e-5), err or why(out["value"], value))

# log_probs: rows already log-softmaxed give the logits' results.
lz = np.array([[log_softmax(z[b, t]) for t in range(T)] for b in range(B)])
lzr = np.array([[log_softmax(zr[b, t]) for t in range(T)] for b in range(B)])
rc, out, err = run({"logits": jsonable(lz), "ref_logits": jsonable(lzr), "mask": mask.tolist(),
                    "log_probs": True, "divergence": "jensen-shannon"})
check("log_probs: exits 0", rc == 0, err)
if rc == 0:
    check_result("log_probs", out, expected("jensen-shannon", z, zr, mask), value_rtol=1e-10)

# ---- N x V rows (one sequence), optional mask of N --------------------------------------

n_rows = np.array([[0.3, -1.2, 2.0, 0.5], [1.0, 1.0, -0.5, 0.0], [-2.0, 0.4, 0.4, 3.0]])
n_ref = np.array([[0.0, -0.7, 1.5, 1.0], [0.2, 1.4, -0.1, -1.0], [-1.0, 0.0, 1.0, 2.0]])
rc, out, err = run({"logits": jsonable(n_rows), "ref_logits": jsonable(n_ref),
                    "divergence": "forward-kl"}, "--spec", "agg=token-sum,beta=0.5")
want = expected("forward-kl", n_rows[None], n_ref[None], np.ones((1, 3), int), agg="token-sum",
                beta=0.5)
check("N x V: exits 0", rc == 0, err)
if rc == 0:
    check("N x V: value is a list of N", len(out["value"]) == 3 and len(out["grad"]) == 3)
    check_result("N x V", {**out, "value": [out["value"]], "grad": [out["grad"]]}, want)
    check("N x V: one sequence of N rows", out["rows"] == 3 and out["sequences"] == 1, str(out))

m = np.array([[1, 0, 1]])
rows_doc = jsonable(n_rows)
rows_doc[1] = [None, None, None, None]
rc, out, err = run({"logits": rows_doc, "ref_logits": jsonable(n_ref), "mask": [1, 0, 1]},
                   "--spec", "agg=seq-mean-token-mean")
want = expected("reverse-kl", n_rows[None], n_ref[None], m, agg="seq-mean-token-mean")
check("N x V with a mask of N: exits 0", rc == 0, err)
if rc == 0:
    check_result("N x V with a mask of N", {**out, "value": [out["value"]], "grad": [out["grad"]]},
                 want)
    check("N x V with a mask of N: counts", out["rows"] == 2 and out["sequences"] == 1, str(out))

# ---- "-inf" entries: a masked vocabulary --------------------------------------------------

ninf = float("-inf")
a = np.array([[0.5, ninf, 1.0, -0.3], [0.2, 0.1, ninf, 0.0]])
r = np.array([[0.1, ninf, 0.7, 0.0], [0.3, -0.4, 0.9, 0.2]])
for name in ["reverse-kl", "jensen-shannon"]:
    # RKL: -inf in both rows at the same entry is a zero-probability term; JSD is finite
    # wherever the -inf stands.
    rc, out, err = run({"logits": jsonable(a), "ref_logits": jsonable(r), "divergence": name})
    want = expected(name, a[None], r[None], np.ones((1, 2), int))
    check(f"-inf {name}: exits 0", rc == 0, err)
    if rc == 0:
        check_result(f"-inf {name}", {**out, "value": [out["value"]], "grad": [out["grad"]]}, want)
        check(f"-inf {name}: zero gradient at -inf", arr(out["grad"])[0, 1] == 0 and
              arr(out["grad"])[1, 2] == 0)
# FKL with pi = 0 where ref > 0 is +inf, written "inf"; its gradient (pi - ref) stays finite.
rc, out, err = run({"logits": jsonable(a), "ref_logits": jsonable(r), "divergence": "forward-kl"},
                   "--spec", "agg=token-sum")
check("-inf forward-kl: exits 0", rc == 0, err)
if rc == 0:
    check("-inf forward-kl: value of row 1 is \"inf\"", out["value"][1] == "inf", str(out["value"]))
    check("-inf forward-kl: loss is \"inf\"", out["loss"] == "inf", str(out["loss"]))
    p1, r1 = np.exp(log_softmax(a[1])), np.exp(log_softmax(r[1]))
    check("-inf forward-kl: gradient pi - ref is finite", close(arr(out["grad"])[1], p1 - r1),
          why(out["grad"][1], p1 - r1))
# RKL where ref = 0 but pi > 0: +inf; the value alone with "gradient": false, else an error.
rc, out, err = run({"logits": jsonable(r), "ref_logits": jsonable(a), "gradient": False})
check("-inf RKL = inf with gradient false", rc == 0 and out["value"][1] == "inf" and
      "grad" not in out, err or str(out))
rc, out, err = run({"logits": jsonable(r), "ref_logits": jsonable(a)})
check("-inf RKL = inf with a gradient exits 2", rc == 2)
check("-inf RKL = inf names ref_logits and the row",
      "ref_logits[1] gives zero probability" in err, err)

# ---- ids and coef: selective log-softmax and coef (onehot - softmax) / tau ---------------

ids = np.array([[2, 0, 4], [1, 3, 3]])
coef = np.array([[0.5, -1.5, 0.0], [2.0, 0.0, 0.0]])
coef_doc = coef.tolist()
coef_doc[0][2] = None  # masked: never read
tau = 0.8
rc, out, err = run({**base, "ids": ids.tolist(), "coef": coef_doc, "temperature": tau})
check("ids + coef: exits 0", rc == 0, err)
if rc == 0:
    logp = np.zeros((B, T))
    lgrad = np.zeros((B, T, V))
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                f = lambda x: coef[b, t] * log_softmax(x / tau)[ids[b, t]]
                logp[b, t] = log_softmax(z[b, t] / tau)[ids[b, t]]
                lgrad[b, t] = numeric_gradient(f, z[b, t].copy())
    check("ids: logp = log_softmax(z / tau)[id]", close(arr(out["logp"]), logp), why(out["logp"], logp))
    check("coef: logits_grad = d coef * logp / dz (central differences)",
          close(arr(out["logits_grad"]), lgrad, rtol=1e-6, atol=1e-8), why(out["logits_grad"], lgrad))
rc, out, err = run({"logits": jsonable(n_rows), "ref_logits": jsonable(n_ref), "ids": [3, 0, 1]})
want = [log_softmax(n_rows[i])[j] for i, j in enumerate([3, 0, 1])]
check("ids on N x V rows, no coef", rc == 0 and close(out["logp"], want) and
      "logits_grad" not in out, err or why(out["logp"], want))

# ---- top-k: ties go to the smaller index, k = V is the forward KL -------------------------

tz = np.array([[0.3, 1.0, -0.2, 0.8]])
tr = np.array([[1.0, 0.5, 1.0, -2.0]])
rc, out, err = run({"logits": jsonable(tz), "ref_logits": jsonable(tr),
                    "divergence": "forward-kl-top-k", "top_k": 2})
check("top-k tie: the smaller index first", rc == 0 and out["indices"] == [[0, 2]], err or str(out))
if rc == 0:
    check_result("top-k tie", {**out, "value": [out["value"]], "grad": [out["grad"]]},
                 expected("forward-kl-top-k", tz[None], tr[None], np.ones((1, 1), int), k=2))
rc, out, err = run({"logits": jsonable(tz), "ref_logits": jsonable(tr),
                    "divergence": "forward-kl-top-k", "top_k": 4})
check("top-k with k = V is the forward KL", rc == 0 and
      close(out["value"], [divergence("forward-kl", tz[0], tr[0])]), err or str(out))
for name, full in [("reverse-kl-top-k", "reverse-kl"), ("forward-kl-top-k-tail", "forward-kl"),
                   ("reverse-kl-top-k-tail", "reverse-kl")]:
    rc, out, err = run({"logits": jsonable(tz), "ref_logits": jsonable(tr),
                        "divergence": name, "top_k": 4})
    check(f"{name} with k = V is the {full}", rc == 0 and
          close(out["value"], [divergence(full, tz[0], tr[0])]), err or str(out))
# The tail forms are at most the full divergence (k + 1 bins merge the rest).
for k in (1, 2):
    for name, full in [("forward-kl-top-k-tail", "forward-kl"),
                       ("reverse-kl-top-k-tail", "reverse-kl")]:
        rc, out, err = run({"logits": jsonable(tz), "ref_logits": jsonable(tr),
                            "divergence": name, "top_k": k})
        check(f"{name}, k = {k}: at most the {full}",
              rc == 0 and out["value"][0] <= divergence(full, tz[0], tr[0]), err or str(out))
# -inf vocabulary entries: the reference has no tail mass, the policy has: the reverse tail
# form is +inf (its gradient an error naming the row), the forward one 0 in the tail bin.
mz = [[0.3, 1.0, -0.2, 0.8]]
mr = [[1.0, "-inf", 2.0, "-inf"]]
rc, out, err = run({"logits": mz, "ref_logits": mr, "divergence": "reverse-kl-top-k-tail",
                    "top_k": 2, "gradient": False})
check("reverse tail form with an empty reference tail is inf", rc == 0 and out["value"] == ["inf"],
      err or str(out))
error_rc, _, err = run({"logits": mz, "ref_logits": mr, "divergence": "reverse-kl-top-k-tail",
                        "top_k": 2})
check("its gradient is an error naming ref_logits[0]", error_rc == 2 and "ref_logits[0]" in err, err)
rc, out, err = run({"logits": mz, "ref_logits": mr, "divergence": "forward-kl-top-k-tail",
                    "top_k": 2})
if rc == 0:
    want = expected("forward-kl-top-k-tail", np.array([mz], float),
                    np.array([[[1.0, -np.inf, 2.0, -np.inf]]]), np.ones((1, 1), int), k=2)
    check_result("forward tail form, -inf reference entries",
                 {**out, "value": [out["value"]], "grad": [out["grad"]]}, want)
check("forward tail form, -inf reference entries: exits 0", rc == 0, err)

# ---- errors: exit status 2, a message naming the field, the index and the value ----------

def error(label, doc, *want, args=()):
    rc, out, err = run(doc, *args)
    check(f"{label}: exits 2", rc == 2, f"status {rc}, stdout {out}")
    for w in want:
        check(f"{label}: says '{w}'", w in err, err)


good = {"logits": [[0.0, 1.0]], "ref_logits": [[1.0, 0.0]]}
error("missing ref_logits", {"logits": [[0.0, 1.0]]}, "no 'ref_logits'")
error("ragged logits", {"logits": [[[0, 1], [0, 1]], [[0, 1], [0]]], "ref_logits": []},
      "logits[1][1] has 1 entry but logits[0][0] has 2")
error("ref_logits shape", {"logits": [[[0, 1], [0, 1]]], "ref_logits": [[[0, 1], [0, 1, 2]]]},
      "ref_logits[0][1] has 3 entries but logits[0][1] has 2")
error("ref_logits depth", {"logits": [[[0, 1], [1, 0]], [[0, 1], [1, 0]]],
                           "ref_logits": [[0, 1], [1, 0]]},
      "ref_logits[0][0] must be a list of 2 entries (as logits[0][0]), got 0")
error("mask shape", {**good, "mask": [1, 0]}, "mask has 2 entries but logits has 1")
error("mask shape, padded", {"logits": [[[0, 1], [0, 1]]], "ref_logits": [[[0, 1], [0, 1]]],
                             "mask": [[1]]}, "mask[0] has 1 entry but logits[0] has 2")
error("\"inf\" entry", {"logits": [[0.0, 1.0], [2.0, "inf"]], "ref_logits": [[0, 0], [0, 0]]},
      'logits[1][1] is "inf"', '"-inf"')
error("another string", {"logits": [[0.0, 1.0]], "ref_logits": [[0.0, "x"]]},
      'ref_logits[0][1] is "x"')
error("a list where a logit stands", {"logits": [[0.0, [1.0]]], "ref_logits": [[0.0, 1.0]]},
      "logits[0][1] must be a number, \"-inf\" or null, got [1.0]")
error("bad divergence name", {**good, "divergence": "kl"}, "divergence 'kl' is unknown",
      "reverse-kl, forward-kl, jensen-shannon, forward-kl-top-k, reverse-kl-top-k, "
      "forward-kl-top-k-tail, reverse-kl-top-k-tail")
error("divergence not a string", {**good, "divergence": 1}, "divergence must be a string, got 1")
error("NaN in a valid row", {"logits": [[0.0, 1.0], [None, 1.0]], "ref_logits": [[0, 0], [0, 0]]},
      "logits[1][0] is null (NaN) in a valid row")
error("NaN in a valid padded row", {"logits": [[[0.0, 1.0], [0.0, 1.0]]],
                                    "ref_logits": [[[0.0, 1.0], [0.0, None]]], "mask": [[1, 1]]},
      "ref_logits[0][1][1] is null (NaN) in a valid row")
error("every logit -inf", {"logits": [["-inf", "-inf"]], "ref_logits": [[0, 0]]},
      "logits[0] has no finite entry")
error("top_k missing", {**good, "divergence": "forward-kl-top-k"}, "needs top_k")
error("top_k > V", {**good, "divergence": "forward-kl-top-k", "top_k": 3},
      "top_k must be an integer in [1, V] = [1, 2], got 3")
error("top_k with another divergence", {**good, "top_k": 1}, "top_k applies only to")
error("top_k missing, reverse", {**good, "divergence": "reverse-kl-top-k-tail"},
      "divergence 'reverse-kl-top-k-tail' needs top_k, the number of the policy's largest")
error("lambda with reverse-kl", {**good, "lambda": 0.2}, "divergence 'reverse-kl' takes none")
error("lambda out of (0, 1)", {**good, "divergence": "jensen-shannon", "lambda": 1.0},
      "jensen-shannon needs 0 < lambda < 1, got 1")
error("temperature", {**good, "temperature": 0}, "temperature must be finite and > 0, got 0")
error("temperature with log_probs", {**good, "temperature": 2, "log_probs": True},
      "given with log_probs = true")
error("log_probs not a boolean", {**good, "log_probs": 1}, "log_probs must be true or false, got 1")
error("unknown key", {**good, "temprature": 2}, "unknown key 'temprature'")
error("a sampled key", {**good, "offsets": [0, 1]}, "unknown key 'offsets'")
error("ids out of the vocabulary", {**good, "ids": [2]}, "ids row 0 is 2, outside the vocabulary [0, 2)")
error("ids not integers", {**good, "ids": [0.5]}, "ids[0] must be an integer, got 0.5")
error("coef without ids", {**good, "coef": [1.0]}, "coef needs ids")
error("coef NaN in a valid row", {**good, "ids": [0], "coef": [None]},
      "coef[0] is null (NaN) in a valid row; a coefficient is a finite number")
error("coef NaN in a valid row of a padded batch",
      {"logits": [[[0.0, 1.0], [1.0, 0.0]]], "ref_logits": [[[1.0, 0.0], [0.0, 1.0]]],
       "ids": [[0, 1]], "coef": [[1.0, None]]},
      "coef[0][1] is null (NaN) in a valid row")
error("a sampled spec", good, "--spec takes only agg=, agg-norm=, agg-eps=, agg-seq-eps=, "
      "agg-scale= and beta=", "'k3-as-loss'",
      args=("--spec", "k3-as-loss,agg=token-sum"))
error("a bad agg", good, "spec 'agg=tokens': unknown agg 'tokens'", args=("--spec", "agg=tokens"))
error("an epsilon the agg does not use", good, "agg=token-sum divides by none",
      args=("--spec", "agg=token-sum,agg-eps=1e-8"))
error("--nonfinite propagate", good, "logits input always raises",
      args=("--nonfinite", "propagate"))

print(f"{passes} passed, {failures} failed")
sys.exit(1 if failures else 0)
