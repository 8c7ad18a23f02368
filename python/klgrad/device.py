"""The device path: klgrad.evaluate's sampled-token kernel written in torch operations on
whole batches, so that it runs where the tensors are (a trainer's GPU; the CPU in the tests,
through backend="device").

It mirrors the C++ kernel's layers (docs/design.md, include/klgrad/kernel/):

    spec -> plan      the kernel's own plan (kernel/plan.hpp), read from
                      klgrad._klgrad.device_plan: the pass, the guard's bounds, the clamp,
                      the weights' limits and the aggregation constants, never re-derived
    batch -> tokens   one flat view of a padded or packed batch: sequence ids and ends
    tokens -> terms   per token, the guarded log-ratio, the clamped estimates and the
                      weights (kernel/estimates.hpp, kernel/weights.hpp)
    terms -> pass     one function per kernel pass (kernel/passes.hpp), each elementwise
                      over the batch plus segmented sums and scans (no Python loop over
                      tokens or sequences: the scans take log2(length) whole-batch steps)
    pass -> summary   loss, kl, kl_sequence and the counts, as device tensors

On CUDA tensors the tensor work (computed()) runs compiled by torch.compile, which fuses its
some 200 operations into a few kernels; set_compiled() chooses per device type.

The inputs are checked in klgrad.device_checks, with the kernel's messages. Nothing of size
B x T crosses to the host; the summary and the checks' flags cross as one small vector
(`Run.fetch`), or, where the caller needs no number on the host, are asserted on the device
(`Run.assert_valid`, torch._assert_async). docs/python.md, "Devices", says which call does
which.
"""
import contextlib
import functools
import warnings
from typing import NamedTuple, Optional

import torch

from . import _int64_of, _klgrad
from ._klgrad import Aggregation, Estimator, Placement, Weighting, WeightLevel
from . import device_checks

__all__ = ["run", "computed", "settled", "counts", "Run", "plan_of", "set_compiled",
           "compiled_runs", "is_compiled"]


# ---- spec -> plan -------------------------------------------------------------------------

class Plan(NamedTuple):
    """The kernel's plan of a spec for one dtype (kernel/plan.hpp), with the spec's typed
    parts the passes read."""
    kernel: dict  # _klgrad.device_plan(spec, dtype)
    estimator: Estimator
    gradient_estimator: Estimator
    placement: Placement
    weighting: Weighting
    weight_level: WeightLevel
    aggregation: Aggregation
    beta: float

    def __getattr__(self, name):  # the kernel plan's fields as attributes
        try:
            return self.kernel[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def reward_part(self):
        return self.placement != Placement.AS_LOSS

    @property
    def loss_part(self):
        return self.placement != Placement.IN_REWARD


@functools.lru_cache(maxsize=256)
def plan_of(spec, dtype):
    """The Plan of a klgrad.Spec for "float32" or "float64"."""
    return Plan(_klgrad.device_plan(spec, dtype), spec.estimator, spec.gradient_estimator,
                spec.placement, spec.weighting, spec.weight_level, spec.aggregation,
                spec.beta)


# ---- batch -> tokens ----------------------------------------------------------------------

class Tokens(NamedTuple):
    """A padded or packed batch as one flat array of N tokens: the inputs, the valid flags,
    each token's sequence id, whether it ends its sequence (the scans stop there) or starts
    it, the number of sequences B, and the longest a sequence can be as the shapes tell (T
    padded, N packed: the scans' number of steps is log2 of it)."""
    logp: torch.Tensor
    ref: torch.Tensor
    behavior: Optional[torch.Tensor]
    valid: torch.Tensor
    sequence: torch.Tensor
    starts: torch.Tensor
    ends: torch.Tensor
    count: int
    span: int
    offsets: Optional[torch.Tensor]  # packed only, int64 on the tokens' device


def _flat(x):
    return None if x is None else x.reshape(-1)


def tokens_of(logp, ref, behavior, mask, offsets):
    """The flat Tokens of a checked batch (views of the inputs where they are contiguous)."""
    n = logp.numel()
    at = torch.arange(n, device=logp.device)
    if offsets is None:
        count, length = logp.shape
        span = min(length, n)
        position = at % length if length else at
        starts, ends = position == 0, position == length - 1
        sequence = at // length if length else at
        packed = None
    else:
        packed = offsets.to(device=logp.device, dtype=torch.int64)
        count = packed.numel() - 1
        span = n
        ends_at = packed[1:]
        # Each token's sequence: the first whose end lies beyond it (empty ones are skipped);
        # clamped so that bad offsets (refused by the checks) index nothing out of range.
        sequence = torch.bucketize(at, ends_at, right=True).clamp_(0, max(count - 1, 0))
        starts = at == packed[:-1][sequence] if count else at < 0
        ends = at == ends_at[sequence] - 1 if count else at < 0
    valid = torch.ones(n, dtype=torch.bool, device=logp.device) if mask is None \
        else _flat(mask) != 0
    return Tokens(_flat(logp), _flat(ref), _flat(behavior), valid, sequence, starts, ends,
                  count, span, packed)


def segment_sum(tokens, x):
    """Per sequence, the sum of x over its tokens, in float64 (the kernel sums in double):
    a padded batch's rows summed, a packed batch's tokens added into their sequences."""
    x = x.to(torch.float64)
    if tokens.offsets is None and x.numel():
        return x.reshape(tokens.count, -1).sum(1)
    out = torch.zeros(tokens.count, dtype=torch.float64, device=x.device)
    return out.index_add(0, tokens.sequence, x)


def scan(x, carry, stop, reverse, span):
    """The linear recurrence y_t = x_t + carry_t * y_{t-1} (forward) or y_{t+1} (reverse),
    restarted where `stop` is set (a sequence's first token forward, its last in reverse), for
    sequences of at most `span` tokens, in log2(span) whole-array steps (Hillis and Steele):
    after step k, y_t holds the terms of the 2^k tokens nearest it and carry_t their product.
    A carry of 0 never meets a NaN or inf of another sequence (torch.where, not a product)."""
    y, a = x, torch.where(stop, torch.zeros_like(carry), carry)
    d = 1
    while d < span:
        if reverse:
            ny = torch.nn.functional.pad(y[d:], (0, d))
            na = torch.nn.functional.pad(a[d:], (0, d))
        else:
            ny = torch.nn.functional.pad(y[:-d], (d, 0))
            na = torch.nn.functional.pad(a[:-d], (d, 0))
        y = y + torch.where(a != 0, a * ny, torch.zeros_like(y))
        a = a * na
        d *= 2
    return y


def sum_to_go(tokens, x, gamma):
    """kernel/sum_to_go.hpp: x_t <- sum_{t' >= t} gamma^(t' - t) x_t' over the valid tokens
    of each sequence (gamma counting valid tokens), saturated; masked entries as they were."""
    carry = torch.where(tokens.valid, torch.full_like(x, gamma), torch.ones_like(x))
    summed = scan(torch.where(tokens.valid, x, torch.zeros_like(x)), carry, tokens.ends, True,
                  tokens.span)
    return torch.where(tokens.valid, saturated(summed), x)


def saturated(x):
    """x clamped to its dtype's finite range (NaN stays NaN), as the kernel's saturated()."""
    top = torch.finfo(x.dtype).max
    return x.clamp(-top, top)


def saturated_dot(a, b):
    """sum(a * b) of float64 a, b, saturated: where the plain sum is not finite (a product or
    the sum overflowed, or +inf met -inf), the sum of the products of a / 2^64 and b / 2^64,
    scaled back and clamped. Finite terms never give NaN; beyond the range, the sign of the
    exact sum (the kernel saturates after each sequence, so its result there depends on the
    order of the sequences; docs/python.md, "Devices")."""
    plain = (a * b).sum()
    tiny = 2.0 ** -64
    scaled = saturated(((a * tiny) * (b * tiny)).sum() / tiny) / tiny
    return saturated(torch.where(torch.isfinite(plain), plain, scaled))


# ---- tokens -> terms ----------------------------------------------------------------------

def _k3(s, series):
    """k3(s) and k3'(s) (core/estimators.hpp): the value from its Taylor series below the
    kernel's radius (full relative precision as s -> 0), else expm1(-s) + s; k3' = -expm1(-s)."""
    coefficients = series["coefficients"]
    q = torch.full_like(s, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        q = s * q + c
    derivative = -torch.expm1(-s)
    value = torch.where(s.abs() < series["radius"], s * s * q, torch.expm1(-s) + s)
    return value, derivative


def estimate(plan, name, s):
    """(k(s), k'(s)) of the estimator `name` (core/estimators.hpp)."""
    if name == Estimator.K1:
        return s, torch.ones_like(s)
    if name == Estimator.K2:
        return s * s * 0.5, s
    if name == Estimator.K3:
        return _k3(s, plan.k3)
    return s.abs(), torch.sign(s)


def clamped_estimate(plan, name, s, acts):
    """core/clamp.hpp's clamp_estimate on every token: the value and derivative of `name`
    under the spec's clamp when it acts on that estimator (`acts`), and where the log-ratio
    bound let s through (None: everywhere)."""
    if not acts:
        return estimate(plan, name, s) + (None,)
    inside = (plan.log_lo <= s) & (s <= plan.log_hi)
    value, derivative = estimate(plan, name, s.clamp(plan.log_lo, plan.log_hi))
    passes = inside
    if not plan.after_weight:
        passes = passes & (plan.value_lo <= value) & (value <= plan.value_hi)
        value = value.clamp(plan.value_lo, plan.value_hi)
    if not plan.pass_gradient:
        derivative = torch.where(passes, derivative, torch.zeros_like(derivative))
    return value, derivative, inside


class Terms(NamedTuple):
    """Per token, what every pass starts from (the kernel's chunk, kernel/chunk.hpp): the
    valid flag as a number, the guarded log-ratio, k_a(s) and k_b'(s) clamped, the weight
    used and its derivative, and the guarded and dropped flags."""
    valid: torch.Tensor
    s: torch.Tensor
    value: torch.Tensor
    derivative: torch.Tensor
    used: torch.Tensor
    grad: torch.Tensor
    guarded: torch.Tensor  # per token: how many of its guards acted (0, 1, 2)
    dropped: torch.Tensor  # per token: dropped by the is-mask band


def terms_of(plan, tokens):
    """The Terms of every token (kernel/estimates.hpp's fill())."""
    valid = tokens.valid
    zero = torch.zeros_like(tokens.logp)
    d = torch.where(valid, tokens.logp - tokens.ref, zero)
    s = d.clamp(plan.lowest, plan.highest)
    guarded = (valid & ((d < plan.lowest) | (d > plan.highest))).to(torch.int64)
    same = plan.estimator == plan.gradient_estimator
    value, derivative, inside = clamped_estimate(plan, plan.estimator, s, plan.clamp_value)
    if not same:
        derivative, inside_g = clamped_estimate(plan, plan.gradient_estimator, s,
                                                plan.clamp_gradient)[1:]
        inside = inside_g if inside is None else (inside if inside_g is None
                                                  else inside & inside_g)
    if not plan.weighted:
        one = torch.ones_like(s)
        return Terms(valid.to(s.dtype), s, value, derivative, one, zero, guarded,
                     torch.zeros_like(guarded))
    used, grad, weight_guarded, dropped = weights_of(plan, tokens, inside)
    return Terms(valid.to(s.dtype), s, value, derivative, used, grad, guarded + weight_guarded,
                 dropped)


def weights_of(plan, tokens, inside):
    """kernel/weights.hpp: each token's log weight at its level, guarded, then the weight it
    uses (after is-clip and is-mask) and d used / d lp. Returns (used, grad, guarded, dropped)
    per token (sequence-mean guards counted on the sequence's first valid token)."""
    valid, bound = tokens.valid, plan.log_bound
    zero = torch.zeros_like(tokens.logp)
    d = torch.where(valid, tokens.logp - tokens.behavior, zero)
    guarded = ((d < -bound) | (d > bound)).to(torch.int64)
    log_w = d.clamp(-bound, bound)
    if plan.weight_level in (WeightLevel.PREFIX, WeightLevel.PER_DECISION):
        carry = scan(torch.where(valid, log_w, zero), torch.ones_like(log_w), tokens.starts,
                     False, tokens.span)
        guarded = guarded + (valid & ((carry < -bound) | (carry > bound))).to(torch.int64)
        log_w = torch.where(valid, carry.clamp(-bound, bound), zero)
    elif plan.weight_level == WeightLevel.SEQUENCE_MEAN:
        log_w, outside = sequence_log_weight(plan, tokens, log_w)
        guarded = guarded + outside
    w = torch.exp(log_w)
    drop = (log_w < plan.weight_log_lo) | (log_w > plan.weight_log_hi)
    truncated = log_w > plan.log_clip
    used = torch.where(drop, zero, torch.where(truncated, torch.full_like(w, plan.clip), w))
    grad = zero  # detached weights pass no gradient; truncated and dropped ones neither
    if plan.weighting == Weighting.DIFFERENTIABLE:
        grad = torch.where(drop | truncated, zero, w)
    if plan.detach and inside is not None:
        grad = grad * inside.to(grad.dtype)
    return used, grad, guarded, (valid & drop).to(torch.int64)


def sequence_log_weight(plan, tokens, log_w):
    """The sequence-mean log weight of each token's sequence (mean over its valid tokens of
    the guarded token log weights, guarded itself), and 1 on the first token of a non-empty
    sequence whose mean the guard clamped."""
    bound = plan.log_bound
    valid = tokens.valid
    n_b = segment_sum(tokens, valid)
    mean = (segment_sum(tokens, torch.where(valid, log_w, torch.zeros_like(log_w)))
            / n_b.clamp(min=1)).to(log_w.dtype)
    outside = (n_b > 0) & ((mean < -bound) | (mean > bound))
    first = tokens.starts & (n_b[tokens.sequence] > 0)
    return (mean.clamp(-bound, bound)[tokens.sequence],
            (first & outside[tokens.sequence]).to(torch.int64))


# ---- the adapter (core/adapter.hpp) -------------------------------------------------------

def placed(plan, reward, loss):
    """[reward] r + [loss] l: the placement's sum of its parts (a part it lacks is left out)."""
    if plan.reward_part and plan.loss_part:
        return reward + loss
    return reward if plan.reward_part else loss


def with_weight_gradient(plan, through_weight, derivative, used):
    """C = W + [loss] u D under a differentiable weight."""
    return through_weight + used * derivative if plan.loss_part else through_weight


def adapt(plan, reward, loss_value, loss_derivative, used, grad):
    """The coefficient of a token's surrogate loss under the spec's weighting."""
    if plan.weighting == Weighting.NONE:
        return placed(plan, reward, loss_derivative)
    if plan.weighting == Weighting.DETACHED:
        return used * placed(plan, reward, loss_derivative)
    return with_weight_gradient(plan, grad * placed(plan, reward, loss_value),
                                loss_derivative, used)


# ---- terms -> pass (kernel/passes.hpp) ----------------------------------------------------

def _scaled(x, scale, sums):
    """coefficient.hpp's store_scaled: scale * x saturated; where a level sum meets a weight
    (`sums`) x saturates first, since scale may be 0."""
    return saturated(scale * (saturated(x) if sums else x))


def token_pass(plan, tokens, t, scale):
    """The token level (the kernel's fused and token passes): each token's own weight
    multiplies its terms."""
    value = t.used * t.value
    c = adapt(plan, t.value, t.value, t.derivative, t.used, t.grad)
    return value, _scaled(t.valid * c, scale, False), None


def after_weight_pass(plan, tokens, t, scale):
    """An as-loss term clamped after its weight: L = clamp(u k_a, lo, hi)."""
    lo, hi = plan.value_lo, plan.value_hi
    x = t.used * t.value
    band = torch.ones_like(x) if plan.pass_gradient else ((lo <= x) & (x <= hi)).to(x.dtype)
    value = t.valid * x.clamp(lo, hi)
    kept = band * t.value
    c = adapt(plan, kept, kept, band * t.derivative, t.used, t.grad)
    return value, _scaled(t.valid * c, scale, False), None


def per_decision_pass(plan, tokens, t, scale):
    """Per-decision weights: c_t = sum_{t' >= t} gamma^(t' - t) u_t' k_a(s_t')."""
    value = t.used * t.value
    summed = sum_to_go(tokens, t.valid * value, plan.gamma)
    return value, saturated(summed * scale), None


def prefix_pass(plan, tokens, t, scale):
    """Differentiable prefix weights: each token gets the weight-gradient part of every later
    token (sum to go of g X), then its own [loss] u D."""
    value = t.used * t.value
    through = sum_to_go(tokens, t.valid * t.grad * placed(plan, t.value, t.value), 1.0)
    c = with_weight_gradient(plan, through, t.derivative, t.used)
    return value, _scaled(t.valid * c, scale, True), None


def _per_token(tokens, per_sequence, dtype):
    return per_sequence.to(dtype)[tokens.sequence]


def sequence_mean_pass(plan, tokens, t, scale):
    """A differentiable sequence-mean weight: every token gets (g / n_b) sum_t X_t."""
    value = t.used * t.value
    top = torch.finfo(t.value.dtype).max
    penalty = saturated(segment_sum(tokens, t.valid * t.value))
    n_b = segment_sum(tokens, tokens.valid).clamp(min=1)
    share = (placed(plan, penalty, penalty) / n_b).clamp(-top, top)
    c = with_weight_gradient(plan, t.grad * _per_token(tokens, share, t.value.dtype),
                             t.derivative, t.used)
    return value, _scaled(t.valid * c, scale, True), None


def to_go_pass(plan, tokens, t, scale):
    """Level to-go: the in-reward penalties summed to go, then weights and scale."""
    r = sum_to_go(tokens, t.valid * t.value, plan.gamma)
    value = t.used * t.value
    c = adapt(plan, r, r, torch.zeros_like(r), t.used, t.grad)
    return value, _scaled(t.valid * c, scale, True), None


def sequence_pass(plan, tokens, t, scale):
    """Level sequence: K = sum k_a(s_t) in reward, the as-loss term of S = sum s_t, broadcast
    to every token. Returns the sequences' guard flags too (S outside the guard)."""
    dtype = t.value.dtype
    top = torch.finfo(dtype).max
    n_b = segment_sum(tokens, tokens.valid)
    penalty = saturated(segment_sum(tokens, t.valid * t.value))
    log_ratio = saturated(segment_sum(tokens, t.s)).to(dtype)
    outside = (n_b > 0) & ((log_ratio < plan.lowest) | (log_ratio > plan.highest))
    s = log_ratio.clamp(plan.lowest, plan.highest)
    k = penalty.clamp(-top, top).to(dtype)
    a = clamped_estimate(plan, plan.estimator, s, plan.clamp_value)[0]
    d = clamped_estimate(plan, plan.gradient_estimator, s, plan.clamp_gradient)[1]
    share = a / n_b.clamp(min=1).to(dtype)
    on = functools.partial(_per_token, tokens, dtype=dtype)
    if plan.loss_part:
        value = t.used * t.valid * on(share)
    else:
        value = t.used * t.value
    c = adapt(plan, on(k), on(a), on(d), t.used, t.grad)
    return value, _scaled(t.valid * c, scale, True), outside.to(torch.int64)


PASSES = {"fused": token_pass, "token": token_pass, "after_weight": after_weight_pass,
          "per_decision": per_decision_pass, "prefix": prefix_pass,
          "sequence_mean": sequence_mean_pass, "to_go": to_go_pass, "sequence": sequence_pass}


# ---- aggregation (core/aggregation.hpp) ---------------------------------------------------

def aggregation_weight(plan, n_b, tokens, sequences):
    """a_{b,t} per sequence (float64): 0 where the count the mode divides by is 0, saturated
    at the largest double."""
    mode = plan.aggregation
    batch = sequences + plan.eps
    one = torch.ones_like(n_b)
    weights = {
        Aggregation.TOKEN_MEAN: lambda: one / (tokens + plan.eps),
        Aggregation.TOKEN_SUM: lambda: one,
        Aggregation.TOKEN_SUM_NORM: lambda: one / plan.norm,
        Aggregation.SEQ_MEAN_TOKEN_SUM: lambda: one / batch,
        Aggregation.SEQ_MEAN_TOKEN_MEAN: lambda: one / (batch * (n_b + plan.seq_eps)),
        Aggregation.SEQ_MEAN_TOKEN_SUM_NORM: lambda: one / (batch * plan.norm),
    }
    a = weights[mode]()
    count = tokens if mode == Aggregation.TOKEN_MEAN else sequences
    if plan.uses_batch_count:
        a = torch.where(count == 0, torch.zeros_like(a), a)
    if plan.uses_sequence_count:
        a = torch.where(n_b == 0, torch.zeros_like(a), a)
    return (plan.scale * a).clamp(max=torch.finfo(torch.float64).max)


def token_scale(plan, n_b, tokens, sequences, dtype):
    """beta * a_{b,t} per sequence in the tokens' dtype, saturated at its largest value."""
    a = aggregation_weight(plan, n_b, tokens, sequences)
    return (plan.beta * a).clamp(max=torch.finfo(dtype).max).to(dtype)


# ---- the run ------------------------------------------------------------------------------

class Run(NamedTuple):
    """One evaluation on the device: value and coef per token (the input's shape), and the
    summary as float64 device tensors; `flags` holds the checks' findings for fetch() and
    assert_valid()."""
    value: torch.Tensor
    coef: torch.Tensor
    loss: torch.Tensor
    summary: torch.Tensor  # total value, tokens, sequences, guarded, dropped
    flags: torch.Tensor    # bad offsets, non-finite input, tokens low, sequences low
    check: "device_checks.Check"

    def fetch(self):
        """(loss, kl, kl_sequence, tokens, sequences, guarded, dropped) as Python numbers,
        the kernel's summary, after raising what the kernel raises: one transfer of a few
        numbers."""
        numbers = torch.cat([self.loss.reshape(1), self.summary,
                             self.flags.to(torch.float64)]).tolist()
        loss, total, tokens, sequences, guarded, dropped = numbers[:6]
        self.check.raise_for(numbers[6:], int(tokens), int(sequences))
        kl = total / tokens if tokens > 0 else 0.0
        kl_sequence = total / sequences if sequences > 0 else 0.0
        return loss, kl, kl_sequence, int(tokens), int(sequences), int(guarded), int(dropped)

    def assert_valid(self):
        """The checks as device assertions (torch._assert_async): no transfer; a failing one
        stops the program with a message that says how to locate the input."""
        self.check.assert_async(self.flags)


def counts(logp, mask=None, offsets=None):
    """(valid tokens, non-empty sequences) of a batch as an int64 tensor of 2 on logp's
    device (nothing crosses to the host)."""
    logp = torch.as_tensor(logp)
    mask = None if mask is None else torch.as_tensor(mask, device=logp.device)
    if offsets is not None:
        offsets = torch.as_tensor(offsets, device=logp.device)
    if offsets is None and logp.dim() != 2:
        raise ValueError(f"logp= has shape {tuple(logp.shape)}; a padded batch takes B x T "
                         f"arrays (pass offsets= for a packed batch of 1-D arrays)")
    tokens = tokens_of(logp, logp, None, mask, offsets)
    n_b = segment_sum(tokens, tokens.valid)
    return torch.stack([n_b.sum(), (n_b > 0).sum().to(n_b.dtype)]).to(torch.int64)


def run(spec, logp, ref, behavior=None, mask=None, offsets=None, tokens=None,
        sequences=None, nonfinite="raise"):
    """The device path of klgrad.evaluate on torch tensors of one device: the checks of what
    the metadata tells and the plan on the host, then computed(): a Run. Integer offsets of
    another dtype are taken as int64, as evaluate() takes them."""
    offsets = _int64_of(offsets)
    check = device_checks.checked(spec, logp, ref, behavior, mask, offsets, tokens, sequences,
                                  nonfinite)
    plan = plan_of(spec, str(logp.dtype).replace("torch.", ""))
    if check.missing_behavior(plan):
        check.raise_missing_behavior()
    if plan.weighted and behavior is None:
        behavior = logp  # spec/presets.hpp: the preset's weight is exp(lp - sg(lp))
    return _computed_on(logp.device.type, plan, check, logp, ref, behavior, mask, offsets,
                        tokens, sequences)


def computed(plan, check, logp, ref, behavior, mask, offsets, tokens, sequences):
    """The tensor work of a run, for a plan and checked arguments: torch operations only
    (no transfer, no data-dependent Python), so that torch.compile traces it whole."""
    flat = tokens_of(logp, ref, behavior if plan.weighted else None, mask, offsets)
    t = terms_of(plan, flat)
    n_b = segment_sum(flat, flat.valid)
    local_tokens, local_sequences = n_b.sum(), (n_b > 0).to(torch.float64).sum()
    given_tokens = local_tokens if tokens is None else torch.full_like(local_tokens, tokens)
    given_sequences = (local_sequences if sequences is None
                       else torch.full_like(local_sequences, sequences))
    scale = token_scale(plan, n_b, given_tokens, given_sequences, logp.dtype)
    value, coef, sequence_guarded = PASSES[plan.kernel["pass"]](
        plan, flat, t, _per_token(flat, scale, logp.dtype))
    nonempty = n_b > 0
    totals = torch.where(nonempty, saturated(segment_sum(flat, value)),
                         torch.zeros_like(n_b))
    loss = saturated_dot(scale.to(torch.float64), totals)
    guarded = t.guarded.sum() + (0 if sequence_guarded is None else sequence_guarded.sum())
    total = saturated_dot(totals, torch.ones_like(totals))
    summary = torch.stack([total, local_tokens, local_sequences, guarded.to(torch.float64),
                           t.dropped.sum().to(torch.float64)])
    flags = check.flags(flat, local_tokens, local_sequences, plan.weighted)
    # An empty sequence gets zeros (passes.hpp's run_sequence).
    nonempty_token = nonempty[flat.sequence]
    value = torch.where(nonempty_token, value, torch.zeros_like(value))
    coef = torch.where(nonempty_token, coef, torch.zeros_like(coef))
    return Run(value.reshape(logp.shape), coef.reshape(logp.shape), loss, summary, flags,
               check)


# ---- compiled runs ------------------------------------------------------------------------
# computed() is some 200 torch operations for a verl k3 step (a CPU profile counts 210 aten
# calls for forward and backward): in eager mode a GPU launches each. Compiled by
# torch.compile, inductor fuses them into a few kernels. Runs on CUDA tensors take the
# compiled form, others the eager one, unless set_compiled() says otherwise
# (docs/python.md, "Devices"). Shapes are dynamic: a new batch size or length does not
# recompile; a new spec, dtype, layout or the presence of tokens= / sequences= does.

_compiled_devices = {"cuda"}
_compiled_computed = None


def set_compiled(enabled, device_type="cuda"):
    """Whether the device path's runs on `device_type` tensors ("cuda", "cpu", ...) take
    computed() compiled by torch.compile (the first run of each spec, dtype and layout
    compiles it: seconds) or run it eagerly; returns the previous setting. Default: compiled
    on CUDA, eager elsewhere."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_compiled: enabled= must be True or False, got {enabled!r}")
    if not _is_device_type(device_type):
        raise ValueError(f"set_compiled: device_type= must be a torch device type (\"cuda\", "
                         f"\"cpu\", ...), got {device_type!r}")
    before = is_compiled(device_type)
    (_compiled_devices.add if enabled else _compiled_devices.discard)(device_type)
    return before


@contextlib.contextmanager
def compiled_runs(enabled, device_type="cuda"):
    """set_compiled(enabled, device_type) for the body of a with statement, the previous
    setting restored after it."""
    before = set_compiled(enabled, device_type)
    try:
        yield
    finally:
        set_compiled(before, device_type)


def _is_device_type(name):
    """True for the name of a torch device type ("cuda", "cpu", "xpu", ...; not "cuda:0")."""
    try:
        return isinstance(name, str) and torch.device(name).type == name
    except RuntimeError:
        return False


def is_compiled(device_type="cuda"):
    """Whether the device path's runs on `device_type` tensors take the compiled computed()
    (set_compiled; a failure of torch.compile turns it off)."""
    return device_type in _compiled_devices


def _computed_on(device_type, *args):
    """computed(*args), compiled where set_compiled() says so for `device_type`; where
    torch.compile itself fails (its exceptions, never the data's: computed() raises nothing
    of its own), a warning, and computed() eagerly from then on for that device."""
    global _compiled_computed
    if not is_compiled(device_type):
        return computed(*args)
    if _compiled_computed is None:
        _compiled_computed = torch.compile(computed, dynamic=True)
    try:
        return _compiled_computed(*args)
    except torch._dynamo.exc.TorchDynamoException as e:
        set_compiled(False, device_type)
        warnings.warn(f"klgrad: torch.compile of the device path failed on {device_type} "
                      f"tensors ({type(e).__name__}); it runs eagerly from now on "
                      f"(klgrad.device.set_compiled(False, {device_type!r}) chooses that "
                      f"without trying)", RuntimeWarning, stacklevel=2)
        return computed(*args)


def needs_counts(plan, tokens, sequences):
    """Whether the aggregation divides by a batch count the caller did not give
    (core/aggregation.hpp's uses_batch_count, read from the plan): N_tokens for token-mean,
    B for the sequence means."""
    if not plan.uses_batch_count:
        return False
    return (tokens if plan.aggregation == Aggregation.TOKEN_MEAN else sequences) is None


def settled(spec, logp, ref, behavior=None, mask=None, offsets=None, tokens=None,
            sequences=None, needs=None):
    """run(), checked as the ops check it: where the aggregation divides by a count the
    caller did not give, the counts and the checks' flags cross to the host in one transfer
    (the kernel's errors and messages); otherwise nothing crosses and the checks are device
    assertions. `needs` overrides the choice (False: never transfer)."""
    r = run(spec, logp, ref, behavior, mask, offsets, tokens, sequences)
    plan = plan_of(spec, str(logp.dtype).replace("torch.", ""))
    if needs_counts(plan, tokens, sequences) if needs is None else needs:
        r.fetch()
    else:
        r.assert_valid()
    return r
