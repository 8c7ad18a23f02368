"""The device path (klgrad.device, backend="device") against the C++ kernel, which stays the
reference: run on CPU tensors here, it must give the kernel's value, coef and summary over a
sweep of the spec grammar, refuse what the kernel refuses with the kernel's message, and
serve the ops (gradient, opcheck, torch.compile) as the kernel does.

Exactness is measured normwise: for each per-token array, max |device - kernel| over the
array divided by max |kernel| over it; for loss, kl and kl_sequence, |device - kernel| over
max(|kernel|, the largest |value| of the batch). Normwise, because the two sum in different
orders (the kernel sequentially by chunks of 256 in T, the device path by segmented float64
sums and log2(T)-step scans): a token whose to-go sum cancels can only match to rounding of
the terms summed, not of itself. Likewise where the exact result is 0 from two products
that cancel (abs~k2-as-loss, is=differentiable: w |s| + w s = 0 for s < 0), the kernel's
fused multiply-add leaves a residue of about 1e-18 where the device path gives 0: an
elementwise relative error of 1 on an entry 1e-18 of the array's largest. The bounds are the
issue's: 1e-12 in float64, 1e-5 in float32. Counts (tokens, sequences, guarded, dropped)
must be equal.
"""
import itertools
import math

import pytest

torch = pytest.importorskip("torch")

import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402
from klgrad import device  # noqa: E402

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
ESTIMATORS = ["k1", "k2", "k3", "abs"]
PLACEMENTS = ["in-reward", "as-loss", "both"]


def terms():
    """Every term of the grammar: each estimator and straight-through pair (a~b, a != b; not
    in-reward, which back-propagates its value) at each placement."""
    out = []
    for a, b in itertools.product(ESTIMATORS, ESTIMATORS):
        for place in PLACEMENTS:
            if a != b and place == "in-reward":
                continue
            out.append(f"{a}~{b}-{place}" if a != b else f"{a}-{place}")
    return out


# Each axis of the grammar with its values (options appended to a term). Every value of
# every axis appears; the sweep crosses them with the terms below.
WEIGHTS = ["is=none", "is=detached", "is=differentiable",
           "is=detached,is-clip=1.5", "is=differentiable,is-clip=1.2",
           "is=differentiable,is-mask=0.5:1.8", "is=detached,is-mask=0.3:inf,is-clip=2",
           "is=differentiable,is-level=prefix", "is=detached,is-level=prefix,is-clip=3",
           "is=detached,is-level=per-decision", "is=detached,is-level=per-decision,gamma=0.9",
           "is=differentiable,is-level=sequence-mean", "is=detached,is-level=sequence-mean",
           "is=differentiable,is-level=sequence-mean,is-mask=0.6:1.5"]
LEVELS = ["level=token", "level=to-go", "level=to-go,gamma=0.8", "level=sequence",
          "level=to-go,gamma=0"]
AGGREGATIONS = ["agg=token-mean", "agg=token-sum", "agg=token-sum-norm,agg-norm=7",
                "agg=seq-mean-token-sum", "agg=seq-mean-token-mean",
                "agg=seq-mean-token-sum-norm,agg-norm=5", "agg=token-mean,agg-eps=0.5",
                "agg=seq-mean-token-mean,agg-seq-eps=0.25,agg-eps=1,agg-scale=3"]
CLAMPS = ["clamp=none", "clamp=log-ratio:-0.6:0.4", "clamp=value:-0.3:0.2",
          "clamp=log-ratio:-1:1/value:-0.5:0.5/est:k3", "clamp=value:-0.2:0.2/after-weight",
          "clamp=log-ratio:-0.5:0.5/detach-weight", "clamp=value:-0.1:0.1/pass-gradient",
          "clamp=log-ratio:-0.3:0.3/est:k3:k2", "clamp=verl", "clamp=openrlhf"]
BETAS = ["beta=1", "beta=0.05", "beta=0"]
PRESETS = ["verl", "openrlhf", "nemo-rl", "trl", "slime", "open-instruct", "roll", "easyr1"]


def option_sets():
    """The options the sweep gives the terms: each axis's values, one at a time, and a few
    products of axes (weights x levels, clamps x weights, aggregations x levels)."""
    singles = WEIGHTS + LEVELS + AGGREGATIONS + CLAMPS + BETAS
    pairs = [f"{w},{lv}" for w, lv in itertools.product(WEIGHTS[1::3], LEVELS[1:])]
    pairs += [f"{c},{w}" for c, w in itertools.product(CLAMPS[1:], WEIGHTS[1:4])]
    pairs += [f"{a},{lv}" for a, lv in itertools.product(AGGREGATIONS, LEVELS[1::2])]
    return singles + pairs


def preset_specs():
    """Every preset with a third of the terms (each term under some presets; those a
    trainer cannot express are refused) and with k3 at each placement (every trainer has
    k3), and the trainers' own names (kl=)."""
    out = []
    ts = terms()
    for k, preset in enumerate(PRESETS):
        for term in ts[k % 3::3] + [f"k3-{place}" for place in PLACEMENTS]:
            out.append(f"{term},preset={preset}")
    out += ["as-loss,preset=verl,kl=low_var_kl", "k3+-as-loss,preset=verl",
            "low_var_kl-as-loss,preset=slime", "3-as-loss,preset=open-instruct",
            "in-reward,preset=openrlhf,kl=k3", "as-loss,preset=easyr1,kl=low_var_kl",
            "mse-as-loss,preset=trl", "kl-in-reward,preset=roll"]
    return out


def sweep_specs():
    """The sweep: every term with every option set, strided so that each term meets a
    different sample (every option set appears with several terms), plus the presets. Spec
    strings the grammar refuses are dropped (and counted)."""
    ts, options = terms(), option_sets()
    texts = [f"{ts[(i * 7 + j) % len(ts)]},{options[i]}" for i in range(len(options))
             for j in range(3)]
    texts += [f"{t},{options[(k * 11) % len(options)]}" for k, t in enumerate(ts)]
    texts += preset_specs()
    specs, refused = [], 0
    for text in texts:
        try:
            spec = klgrad.Spec(text)
        except klgrad.SpecError:
            refused += 1
            continue
        if spec not in specs:
            specs.append(spec)
    return specs, refused


# ---- batches ------------------------------------------------------------------------------

def padded_batch(dtype, rows=5, length=11, seed=1):
    """B x T with a random mask, one empty row, behaviour log-probs a little off."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, length, generator=g, dtype=torch.float64) * 3
    ref = logp + 0.6 * torch.randn(rows, length, generator=g, dtype=torch.float64)
    behavior = logp + 0.4 * torch.randn(rows, length, generator=g, dtype=torch.float64)
    mask = torch.rand(rows, length, generator=g) < 0.75
    mask[2] = False
    return dict(logp=logp.to(dtype), ref=ref.to(dtype), behavior=behavior.to(dtype),
                mask=mask)


def packed_batch(dtype, lengths=(4, 0, 7, 1, 300), seed=2):
    """N tokens cut by offsets (an empty sequence, a long one for the scans), masked."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    logp = -torch.rand(n, generator=g, dtype=torch.float64) * 3
    ref = logp + 0.6 * torch.randn(n, generator=g, dtype=torch.float64)
    behavior = logp + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    mask = torch.rand(n, generator=g) < 0.8
    offsets = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.int64)
    return dict(logp=logp.to(dtype), ref=ref.to(dtype), behavior=behavior.to(dtype),
                mask=mask.to(torch.int32), offsets=offsets)


def all_masked_batch(dtype):
    b = padded_batch(dtype, rows=3, length=4, seed=3)
    b["mask"] = torch.zeros(3, 4, dtype=torch.uint8)
    return b


def guarded_batch(dtype):
    """Log-ratios and log weights beyond the guards of either dtype (k3's exp, the weights'
    exp_bound), so that guarded counts and clamped values are compared too."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -1.0, -4.0, -0.1]], dtype=dtype)
    ref = logp - torch.tensor([[-400.0, 0.1, 60.0, -0.2], [0.3, -50.0, 0.0, 1e3]], dtype=dtype)
    behavior = logp - torch.tensor([[500.0, 0.2, -0.1, -400.0], [-50.0, 0.0, 0.3, 0.1]],
                                   dtype=dtype)
    return dict(logp=logp, ref=ref, behavior=behavior, mask=None)


def unmasked_packed_batch(dtype):
    """A packed batch without a mask (every token valid), an empty sequence first."""
    return dict(packed_batch(dtype, lengths=(0, 3, 6), seed=4), mask=None)


BATCHES = {"padded": padded_batch, "packed": packed_batch, "all-masked": all_masked_batch,
           "guarded": guarded_batch, "packed-unmasked": unmasked_packed_batch}


# ---- comparison ---------------------------------------------------------------------------

def normwise(device_array, kernel_array):
    d, k = device_array.double(), kernel_array.double()
    scale = k.abs().max().item() if k.numel() else 0.0
    error = (d - k).abs().max().item() if k.numel() else 0.0
    return error / scale if scale > 0 else error


def errors(spec, batch, **counts):
    """({field: error}, the kernel's Result) of the device path against the kernel on one
    batch (error 0 for equal counts, inf for different ones)."""
    k = klgrad.evaluate(spec, **batch, **counts, backend="kernel")
    d = klgrad.evaluate(spec, **batch, **counts, backend="device")
    out = {"value": normwise(d.value, k.value), "coef": normwise(d.coef, k.coef)}
    scale = max(k.value.abs().max().item() if k.value.numel() else 0.0, 1e-300)
    for name in ("loss", "kl", "kl_sequence"):
        a, b = getattr(d, name), getattr(k, name)
        out[name] = abs(a - b) / max(abs(b), scale)
    for name in ("tokens", "sequences", "guarded", "dropped"):
        out[name] = 0.0 if getattr(d, name) == getattr(k, name) else math.inf
    return out, k


def global_counts_of(batch):
    k = klgrad.evaluate("k1-in-reward", **{n: batch[n] for n in batch if n != "behavior"},
                        backend="kernel")
    return dict(tokens=k.tokens + 5, sequences=k.sequences + 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sweep_matches_the_kernel(dtype):
    """The sweep: every spec on every batch, with and without global counts; prints its
    size and the worst error per field (the issue's closing note quotes them)."""
    specs, refused = sweep_specs()
    worst, runs, reached = {}, 0, {"guarded": 0, "dropped": 0}
    batches = {name: make(dtype) for name, make in BATCHES.items()}
    for spec in specs:
        for name, batch in batches.items():
            for counts in ({}, global_counts_of(batch)):
                found, kernel = errors(spec, batch, **counts)
                for field, error in found.items():
                    if error > worst.get(field, (-1.0, None))[0]:
                        worst[field] = (error, f"{spec} on {name} {counts}")
                for field in reached:
                    reached[field] += getattr(kernel, field) > 0
                runs += 1
    print(f"\nsweep ({dtype}): {len(specs)} specs ({refused} refused by the grammar) x "
          f"{len(BATCHES)} batches x 2 count settings = {runs} runs; runs with guarded "
          f"tokens: {reached['guarded']}, with dropped tokens: {reached['dropped']}")
    assert all(reached.values()), reached  # the guards and the band act somewhere
    for field, (error, where) in worst.items():
        print(f"  {field:12s} worst {error:.3g}  ({where})")
    bound = TOLERANCE[dtype]
    bad = {f: w for f, w in worst.items() if not w[0] <= bound}
    assert not bad, bad


# Scales at the ends of the range: beta and agg-scale near the largest double or float, a norm
# near the smallest double (the kernel saturates at the dtype's largest value).
EXTREMES = ["k3-both,beta=1e30", "k3-as-loss,beta=1e308",
            "k1-in-reward,agg=token-sum-norm,agg-norm=1e-300,beta=1e10",
            "k1-in-reward,level=to-go,beta=1e30,agg=token-sum",
            "k3-in-reward,level=sequence,beta=1e300",
            "k2-as-loss,is=differentiable,is-level=prefix,beta=1e300",
            "k1-in-reward,is=detached,is-level=per-decision,beta=1e38",
            "k1-in-reward,agg=seq-mean-token-sum,agg-scale=1e308,beta=1e300"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saturated_scales_match_and_never_give_nan(dtype):
    """At the ends of the range the device path saturates as the kernel does: value, coef
    and the summary match (no NaN from finite inputs), except a loss whose exact sum lies
    beyond the largest double: the kernel saturates it after each sequence, so its figure
    depends on the order of the sequences (seen: -7.18e307 where the exact sum is below
    -1.8e308); the device path gives the saturated exact sum, of the same sign."""
    top = torch.finfo(torch.float64).max
    for text in EXTREMES:
        for name, make in BATCHES.items():
            batch = make(dtype)
            found, kernel = errors(klgrad.Spec(text), batch)
            d = klgrad.evaluate(text, **batch, backend="device")
            assert not (d.coef.isnan().any() or d.value.isnan().any() or math.isnan(d.loss))
            for field, error in found.items():
                if field == "loss" and error > TOLERANCE[dtype]:
                    assert abs(kernel.loss) > top / 100 and abs(d.loss) == top, (text, name)
                    assert math.copysign(1, d.loss) == math.copysign(1, kernel.loss)
                else:
                    assert error <= TOLERANCE[dtype], (text, name, field, error)


def test_sweep_covers_every_axis():
    """The sweep's sample names every value of every axis of the grammar."""
    specs, _ = sweep_specs()
    seen = {(a, str(getattr(s, a))) for s in specs
            for a in ("estimator", "gradient_estimator", "placement", "weighting",
                      "weight_level", "level", "aggregation", "preset")}
    for axis, values in (("estimator", ESTIMATORS), ("gradient_estimator", ESTIMATORS),
                         ("placement", PLACEMENTS), ("weighting", list(klgrad.Weighting)),
                         ("weight_level", list(klgrad.WeightLevel)),
                         ("level", list(klgrad.Level)),
                         ("aggregation", list(klgrad.Aggregation)),
                         ("preset", list(klgrad.Preset))):
        for v in values:
            assert (axis, str(v)) in seen, (axis, v)
    passes = {klgrad._klgrad.device_plan(s, "float64")["pass"] for s in specs}
    assert passes == set(device.PASSES), passes


# ---- refusals: the kernel's messages are the reference ------------------------------------

def _nan_at(batch, name, index, value=math.nan):
    out = dict(batch)
    x = out[name].clone()
    x.view(-1)[index] = value
    out[name] = x
    return out


def refusal_cases():
    """(id, spec, arguments) that the kernel refuses: one bad thing each."""
    p, q = padded_batch(torch.float64), packed_batch(torch.float64)
    p_mask1 = dict(p, mask=torch.ones_like(p["mask"]))
    q_plain = dict(q, mask=None)
    short = torch.zeros(5, 10, dtype=torch.float64)
    cases = [
        ("ref-shape", "k1-in-reward", dict(p, ref=short)),
        ("ref-ndim", "k1-in-reward", dict(p, ref=p["ref"][0])),
        ("ref-dtype", "k1-in-reward", dict(p, ref=p["ref"].float())),
        ("mask-shape", "k1-in-reward", dict(p, mask=p["mask"][:, :3])),
        ("mask-ndim", "k1-in-reward", dict(p, mask=p["mask"][0])),
        ("behavior-shape", "k1-in-reward", dict(p, behavior=short)),
        ("behavior-dtype", "k1-in-reward,is=detached", dict(p, behavior=p["behavior"].float())),
        ("logp-dtype", "k1-in-reward", dict(p, logp=p["logp"].half(), ref=p["ref"].half())),
        ("logp-ndim", "k1-in-reward", dict(p, logp=p["logp"][0], ref=p["ref"][0],
                                           behavior=None, mask=None)),
        ("packed-ndim", "k1-in-reward", dict(p, offsets=torch.tensor([0, 5]))),
        ("offsets-start", "k1-in-reward", dict(q, offsets=q["offsets"] + 1)),
        ("offsets-order", "k1-in-reward", dict(q, offsets=torch.tensor([0, 4, 2, 11, 12, 312]))),
        ("offsets-end", "k1-in-reward", dict(q, offsets=torch.tensor([0, 4, 4, 11, 12, 300]))),
        ("offsets-empty", "k1-in-reward", dict(q, offsets=torch.zeros(0, dtype=torch.int64))),
        ("offsets-2d", "k1-in-reward", dict(q, offsets=q["offsets"].reshape(2, 3))),
        ("offsets-float", "k1-in-reward", dict(q, offsets=q["offsets"].double())),
        ("packed-mask", "k1-in-reward", dict(q, mask=q["mask"][:9])),
        ("packed-ref", "k1-in-reward", dict(q, ref=q["ref"][:9])),
        ("behavior-missing", "k1-in-reward,is=detached", dict(p, behavior=None)),
        ("behavior-missing-packed", "k2-as-loss,is=differentiable", dict(q, behavior=None)),
        ("tokens-low", "k1-in-reward", dict(p, tokens=3)),
        ("sequences-low", "k1-as-loss,agg=seq-mean-token-sum", dict(p, sequences=1)),
        ("tokens-zero", "k1-in-reward", dict(p, tokens=0)),
        ("sequences-bool", "k1-in-reward", dict(p, sequences=True)),
        ("nonfinite-word", "k1-in-reward", dict(p, nonfinite="ignore")),
        ("value-shape", "k1-in-reward", dict(p, value=short)),
        ("coef-dtype", "k1-in-reward", dict(p, coef=torch.zeros(5, 11))),
        ("logp-nan", "k1-in-reward", _nan_at(p_mask1, "logp", 13)),
        ("ref-inf", "k3-as-loss", _nan_at(p_mask1, "ref", 20, math.inf)),
        ("ref-minus-inf", "k3-as-loss", _nan_at(p_mask1, "ref", 20, -math.inf)),
        ("behavior-nan-weighted", "k2-as-loss,is=detached", _nan_at(p_mask1, "behavior", 7)),
        ("packed-nan", "k1-in-reward,level=to-go", _nan_at(q_plain, "logp", 200)),
        ("packed-behavior-nan", "k3-as-loss,is=differentiable,is-level=prefix",
         _nan_at(q_plain, "behavior", 30)),
    ]
    # Unweighted, a non-finite behaviour log-prob is reported only in a chunk (256 tokens of a
    # sequence) whose log-ratio is not finite: here the NaN logp at 250 of the long sequence
    # (flat 262) shares a chunk with the behaviour's at 10 (flat 22), which comes first.
    both = _nan_at(_nan_at(q_plain, "behavior", 22), "logp", 262)
    cases.append(("behavior-in-chunk", "k1-in-reward", both))
    return cases


@pytest.mark.parametrize("case", refusal_cases(), ids=lambda c: c[0])
def test_refusals_are_the_kernels(case):
    """The device path raises the kernel's exception type with the kernel's message."""
    _, spec, arguments = case
    with pytest.raises(Exception) as kernel:
        klgrad.evaluate(spec, **arguments, backend="kernel")
    with pytest.raises(type(kernel.value)) as on_device:
        klgrad.evaluate(spec, **arguments, backend="device")
    assert str(on_device.value) == str(kernel.value)


def test_what_the_kernel_lets_through_passes_on_the_device():
    """Non-finite inputs the kernel does not refuse: in a masked token; a non-finite
    behaviour log-prob of an unweighted spec outside any chunk with a non-finite log-ratio;
    and nonfinite="propagate", whose NaN lands where the kernel's does."""
    p = padded_batch(torch.float64)
    masked = int(torch.nonzero(~p["mask"].reshape(-1))[0])
    cases = [("k3-as-loss", _nan_at(p, "logp", masked), {}),
             ("k1-in-reward", _nan_at(p, "behavior", 3), {}),
             ("k1-in-reward,level=to-go", _nan_at(dict(p, mask=None), "logp", 14),
              {"nonfinite": "propagate"})]
    for spec, batch, extra in cases:
        k = klgrad.evaluate(spec, **batch, **extra, backend="kernel")
        d = klgrad.evaluate(spec, **batch, **extra, backend="device")
        for name in ("value", "coef"):
            a, b = getattr(d, name), getattr(k, name)
            assert torch.equal(a.isnan(), b.isnan()), (spec, name)
            assert normwise(a.nan_to_num(), b.nan_to_num()) <= 1e-12, (spec, name)
        assert (d.tokens, d.sequences, d.guarded) == (k.tokens, k.sequences, k.guarded)


# ---- the ops: gradient, registration, opcheck, torch.compile ------------------------------

def test_auto_takes_the_kernel_on_the_cpu_and_the_device_path_elsewhere():
    cpu = torch.zeros(1)
    assert not klgrad.uses_device("auto", cpu) and not klgrad.uses_device("kernel", cpu)
    assert klgrad.uses_device("device", cpu)
    assert klgrad.uses_device("auto", torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match="backend= must be"):
        klgrad.uses_device("gpu", cpu)


def test_the_device_path_is_the_ops_cuda_kernel():
    for op in ("klgrad::kl_loss", "klgrad::kl_penalty"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_loss_gradient_on_the_device_is_the_kernels_coef(dtype):
    """loss.backward() gives logp.grad = coef (the device path's, which the sweep compares
    with the kernel's; here against the kernel directly)."""
    b = padded_batch(dtype)
    spec = "k3-as-loss,is=differentiable,is-level=prefix,agg=seq-mean-token-mean,beta=0.3"
    logp = b["logp"].clone().requires_grad_(True)
    loss, value = kt.kl_loss(spec, logp, b["ref"], behavior=b["behavior"], mask=b["mask"],
                             backend="device")
    loss.backward()
    k = klgrad.evaluate(spec, **b, backend="kernel")
    assert normwise(logp.grad, k.coef) <= TOLERANCE[dtype]
    assert normwise(value, k.value) <= TOLERANCE[dtype]
    assert abs(loss.item() - k.loss) <= TOLERANCE[dtype] * abs(k.loss)
    penalty = kt.kl_penalty(spec, b["logp"], b["ref"], behavior=b["behavior"], mask=b["mask"],
                            backend="device")
    assert normwise(penalty, 0.3 * k.value) <= TOLERANCE[dtype]


def test_given_counts_check_on_the_device_without_a_transfer():
    """With the counts the aggregation needs given, kl_loss fetches nothing: its checks are
    torch._assert_async, which on the CPU raise at once."""
    b = _nan_at(dict(padded_batch(torch.float64), mask=None), "logp", 3)
    with pytest.raises(RuntimeError, match="check of nonfinite failed"):
        kt.kl_loss("k1-in-reward", b["logp"], b["ref"], tokens=100, backend="device")
    with pytest.raises(klgrad.NonFiniteError, match="logp at sequence 0, position 3"):
        kt.kl_loss("k1-in-reward", b["logp"], b["ref"], backend="device")


def _op_args_with_backend(case, dtype):
    from test_ops import kl_op_args
    return kl_op_args(*case, dtype) + ("device",)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", __import__("test_ops").KL_CASES, ids=lambda c: c[0])
def test_opcheck_on_the_device_path(case, dtype):
    torch.library.opcheck(torch.ops.klgrad.kl_loss.default, _op_args_with_backend(case, dtype))
    args = _op_args_with_backend(case, dtype)
    torch.library.opcheck(torch.ops.klgrad.kl_penalty.default, args[:6] + ("device",))


def test_compiled_step_on_the_device_path_has_no_graph_break():
    """torch.compile(fullgraph=True) of a GRPO step whose KL term takes the device path gives
    the eager step's loss and gradients (the eager step takes the kernel)."""
    from test_ops import Policy, compiled_against_eager, assert_close_grads

    def step(policy, x, ids, ref, mask, backend):
        logp = policy(x, ids)
        return kt.kl_loss("k3-as-loss,level=token,agg=seq-mean-token-mean,beta=0.04", logp,
                          ref, mask=mask, backend=backend)

    g = torch.Generator().manual_seed(9)
    rows, steps, features, vocab = 3, 5, 6, 11
    policy = Policy(features, vocab)
    x = torch.randn(rows, steps, features, generator=g)
    ids = torch.randint(0, vocab, (rows, steps), generator=g)
    with torch.no_grad():
        ref = Policy(features, vocab, seed=12)(x, ids)
    mask = torch.rand(rows, steps, generator=g) < 0.8
    eager, compiled, _, out_eager, out = compiled_against_eager(
        lambda p, *a: step(p, *a, "device"), policy, x, ids, ref, mask)
    kernel_policy = Policy(features, vocab)
    loss_kernel, _ = step(kernel_policy, x, ids, ref, mask, "kernel")
    loss_kernel.backward()
    torch.testing.assert_close(out[0], loss_kernel, rtol=1e-5, atol=1e-7)
    assert_close_grads(compiled, [p.grad for p in kernel_policy.parameters()], 1e-5)
    assert_close_grads(eager, [p.grad for p in kernel_policy.parameters()], 1e-5)


def test_no_transfer_when_the_counts_are_given():
    """With tokens= and sequences= given, the device path of the ops runs on the meta device,
    which has no data: any transfer to the host (.item(), .tolist(), a data-dependent shape)
    would raise there. One spec per pass, padded and packed."""
    meta = torch.device("meta")
    by_pass = {}
    for spec in sweep_specs()[0]:
        by_pass.setdefault(klgrad._klgrad.device_plan(spec, "float64")["pass"], spec)
    padded = [torch.empty(4, 7, dtype=torch.float64, device=meta) for _ in range(3)]
    packed = [x.reshape(-1)[:9] for x in padded]
    offsets = torch.tensor([0, 3, 3, 9], device=meta)
    for spec in by_pass.values():
        for (lp, ref, lb), offs in ((padded, None), (packed, offsets)):
            mask = torch.empty(lp.shape, dtype=torch.bool, device=meta)
            r = device.settled(spec, lp, ref, lb, mask, offs, 100, 10)
            assert r.coef.shape == lp.shape and r.loss.device == meta
    assert set(by_pass) == set(device.PASSES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_auto_takes_the_device_path_and_matches_the_kernel():
    """On a GPU (skipped here): backend="auto" runs the device path where the tensors are, and
    every pass gives the kernel's results on the same inputs copied to the CPU. Its runs
    eager here: compiled, these 32 forms would each compile (test_device_compiled.py checks
    the compiled runs on CUDA, three passes)."""
    with device.compiled_runs(False, "cuda"):
        every_pass_on_cuda_matches_the_kernel()


def every_pass_on_cuda_matches_the_kernel():
    by_pass = {}
    for spec in sweep_specs()[0]:
        by_pass.setdefault(klgrad._klgrad.device_plan(spec, "float64")["pass"], spec)
    for dtype in TOLERANCE:
        for make in (padded_batch, packed_batch):
            batch = make(dtype)
            on_gpu = {n: (x.cuda() if isinstance(x, torch.Tensor) and n != "offsets" else x)
                      for n, x in batch.items()}
            for spec in by_pass.values():
                _, kernel = errors(spec, batch)
                d = klgrad.evaluate(spec, **on_gpu)
                assert d.coef.is_cuda
                assert normwise(d.coef.cpu(), kernel.coef) <= TOLERANCE[dtype], spec
                assert normwise(d.value.cpu(), kernel.value) <= TOLERANCE[dtype], spec
                logp = on_gpu["logp"].clone().requires_grad_(True)
                loss, _ = kt.kl_loss(spec, logp, on_gpu["ref"], behavior=on_gpu["behavior"],
                                     mask=on_gpu["mask"], offsets=on_gpu.get("offsets"))
                loss.backward()
                assert normwise(logp.grad.cpu(), kernel.coef) <= TOLERANCE[dtype], spec


def test_the_device_path_traces_whole_under_torch_compile():
    """device.computed (the tensor work of a run, for a plan and checked arguments) compiles
    with fullgraph=True (no graph break, no transfer), padded and packed, and gives the same
    coef and loss as eager. aot_eager: the whole graph is traced without inductor's C++
    compile time (inductor on the CPU compiles the padded path too, in 6-24 s a spec here)."""
    spec = klgrad.Spec("k3-both,is=differentiable,is-level=prefix,clamp=verl,"
                       "agg=seq-mean-token-mean")
    plan = device.plan_of(spec, "float64")
    for batch in (padded_batch(torch.float64), packed_batch(torch.float64)):
        args = (batch["logp"], batch["ref"], batch["behavior"], batch["mask"],
                batch.get("offsets"), 1000, 100)
        check = klgrad.device_checks.checked(spec, *args, "raise")

        def coef_and_loss(*tensors):
            r = device.computed(plan, check, *tensors)
            return r.coef, r.loss, r.flags

        eager = coef_and_loss(*args)
        torch._dynamo.reset()
        compiled = torch.compile(coef_and_loss, fullgraph=True, backend="aot_eager")(*args)
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-16)


def test_outputs_given_are_written_in_place():
    b = padded_batch(torch.float64)
    value, coef = torch.empty_like(b["logp"]), torch.empty_like(b["logp"])
    r = klgrad.evaluate("k2-as-loss,level=sequence", **b, value=value, coef=coef,
                        backend="device")
    assert r.value is value and r.coef is coef
    k = klgrad.evaluate("k2-as-loss,level=sequence", **b, backend="kernel")
    assert normwise(coef, k.coef) <= 1e-12 and normwise(value, k.value) <= 1e-12


def test_int32_offsets_serve_both_paths_of_the_op():
    q = packed_batch(torch.float64)
    offsets = q["offsets"].to(torch.int32)
    for backend in ("kernel", "device"):
        loss, _ = kt.kl_loss("k1-in-reward,level=to-go", q["logp"], q["ref"], mask=q["mask"],
                             offsets=offsets, backend=backend)
        k = klgrad.evaluate("k1-in-reward,level=to-go", **q, backend="kernel")
        assert abs(loss.item() - k.loss) <= 1e-12 * abs(k.loss)


def test_counts_are_the_kernels():
    """device.counts (what global_counts all-reduces) equals the kernel's tokens and
    sequences, padded and packed, masked or not."""
    for make in BATCHES.values():
        b = make(torch.float64)
        k = klgrad.evaluate("k1-in-reward", **b, backend="kernel")
        got = device.counts(b["logp"], b["mask"], b.get("offsets")).tolist()
        assert got == [k.tokens, k.sequences]


def test_layouts_the_kernel_cannot_read_in_place_are_taken_as_they_are():
    """The one deliberate difference in refusals: the kernel refuses rows that are not
    contiguous (it reads memory in place); torch operations take any strides, so the device
    path computes on them, equal to the kernel on contiguous copies."""
    b = padded_batch(torch.float64)
    strided = {n: (x.t().contiguous().t() if n in ("logp", "ref") else x) for n, x in b.items()}
    with pytest.raises(klgrad.ShapeError):
        klgrad.evaluate("k3-as-loss", **strided, backend="kernel")
    d = klgrad.evaluate("k3-as-loss", **strided, backend="device")
    k = klgrad.evaluate("k3-as-loss", **b, backend="kernel")
    assert normwise(d.coef, k.coef) <= 1e-12 and d.tokens == k.tokens
