"""klgrad from Python: exact KL values and coefficients d(loss)/d(log pi) for an RL trainer's
sampled tokens, and exact full-vocabulary divergences, from the same C++ headers as the
library (a thin compiled layer, no formula of its own). The C++ kernel computes on the CPU;
torch tensors, numpy arrays and any DLPack producer cross without copies (DLPack), 16-bit
logits included. See docs/python.md.
"""
import sys

import numpy as _np

from . import _klgrad
from ._klgrad import (Aggregation, Estimator, InputError, Level, NonFiniteError, Placement,
                      Preset, ShapeError, Spec, SpecError, WeightLevel, Weighting)

from ._bench import BenchResult, bench

__version__ = _klgrad.__version__

__all__ = [
    "Spec", "parse_spec", "SpecError", "ShapeError", "InputError", "NonFiniteError",
    "Estimator", "Placement", "Weighting", "WeightLevel", "Level", "Aggregation", "Preset",
    "Result", "evaluate", "explain", "from_trainer_config", "audit", "LogitsResult",
    "logits_divergence", "selective_log_softmax", "sampled_logits_gradient", "bench",
    "BenchResult", "__version__",
]


def parse_spec(text):
    """The Spec of a spec string (same as Spec(text)); raises SpecError."""
    return Spec(text)


def _spec_of(spec):
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        return Spec(spec)
    raise TypeError(f"spec= must be a klgrad.Spec or a spec string, got {type(spec).__name__}")


class Result:
    """What evaluate() returns: per-token value and coef (the input's type: numpy in, numpy
    out; torch in, torch out) and the batch summary (loss, kl, kl_sequence, tokens,
    sequences, guarded, dropped)."""

    __slots__ = ("value", "coef", "loss", "kl", "kl_sequence", "tokens", "sequences",
                 "guarded", "dropped")

    def __init__(self, fields):
        (self.value, self.coef, self.loss, self.kl, self.kl_sequence, self.tokens,
         self.sequences, self.guarded, self.dropped) = fields

    def __repr__(self):
        return (f"klgrad.Result(loss={self.loss!r}, kl={self.kl!r}, "
                f"kl_sequence={self.kl_sequence!r}, tokens={self.tokens}, "
                f"sequences={self.sequences}, guarded={self.guarded}, dropped={self.dropped})")


def _torch():
    return sys.modules.get("torch")


def _is_tensor(x):
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _crossing(x, name):
    """x as it crosses to the kernel: a torch tensor detached (nothing flows into klgrad's
    inputs; DLPack refuses a tensor that requires grad) and refused, naming the argument,
    when it is not on the CPU; another DLPack producer as a numpy view of its memory
    (numpy.from_dlpack, no copy); numpy arrays and None unchanged. The binding reads what
    crosses by DLPack."""
    if _is_tensor(x):
        if x.device.type != "cpu":
            raise TypeError(f"{name}= is on device {x.device}; klgrad's C++ kernel computes "
                            f"on the CPU (pass {name}.cpu())")
        return x.detach()
    if x is not None and not isinstance(x, _np.ndarray) and hasattr(x, "__dlpack__"):
        return _np.from_dlpack(x)  # another producer: a numpy view of the same memory
    return x


def _empty(like, shape, dtype):
    """A new array of `shape` in like's framework: a torch tensor for a tensor, else numpy.
    dtype: a numpy dtype name ("float32", "int64", ...)."""
    if _is_tensor(like):
        return _torch().empty(shape, dtype=getattr(_torch(), dtype))
    return _np.empty(shape, dtype=dtype)


def _float_name(x):
    """"float32" or "float64" for a float array of either framework, else None."""
    name = _dtype_name(x)
    return name if name in ("float32", "float64") else None


# Mask dtypes the kernel reads in place; others are converted (mask != 0, a copy of B x T
# bools, documented in docs/python.md).
_MASK_IN_PLACE = {"bool", "uint8", "int8", "int32", "uint32", "int64", "uint64", "float32",
                  "float64"}


def _dtype_name(x):
    return str(getattr(x, "dtype", "")).replace("torch.", "")


def _mask_of(mask):
    if mask is None or _dtype_name(mask) in _MASK_IN_PLACE:
        return mask
    if _is_tensor(mask) or isinstance(mask, _np.ndarray):
        return mask != 0
    return mask


def _row_mask(mask):
    """A mask of the logits paths, as they read it: bool / uint8 (N entries; others become
    mask != 0, a copy)."""
    m = _mask_of(_crossing(mask, "mask"))
    if m is not None and _dtype_name(m) not in ("bool", "uint8"):
        m = m != 0
    return m


def _int64_of(x):
    """Offsets or ids as int64 (B + 1 or N entries; converted when they are another integer
    type)."""
    if x is None or _dtype_name(x) == "int64":
        return x
    if _is_tensor(x):
        if x.dtype.is_floating_point or x.dtype.is_complex:
            return x
        return x.to(_torch().int64)
    if isinstance(x, _np.ndarray) and x.dtype.kind in "iub":
        return x.astype(_np.int64)
    return x


def evaluate(spec, logp, ref, *, behavior=None, mask=None, offsets=None, tokens=None,
             sequences=None, nonfinite="raise", value=None, coef=None):
    """Evaluates a spec on a batch: for every token the value the configuration logs and the
    coefficient coef = d(loss)/d(logp) to back-propagate (loss = sum(coef * logp) up to a
    constant), and the summary.

    logp, ref, behavior: log-probabilities of the sampled tokens under the policy, the
    reference and the behaviour policy (float32 or float64, one dtype): B x T (padded) or N
    (packed, with offsets: B + 1 non-decreasing integers from 0 to N). mask: same shape,
    bool / integer / float, nonzero = valid. tokens, sequences: global counts of a
    data-parallel batch (None: this batch's). nonfinite: "raise" (NonFiniteError naming the
    first bad token) or "propagate". value, coef: arrays to write into (else new ones).
    torch tensors, numpy arrays and DLPack producers are read in place, mixed as you like;
    new results are torch tensors when logp is one, else numpy arrays.
    """
    spec = _spec_of(spec)
    logp = _crossing(logp, "logp")
    args = [_crossing(x, n) for x, n in ((ref, "ref"), (behavior, "behavior"))]
    mask, offsets = _mask_of(_crossing(mask, "mask")), _int64_of(_crossing(offsets, "offsets"))
    dtype = _float_name(logp)
    if dtype is not None:  # else the binding refuses logp, naming it
        shape = tuple(logp.shape)
        value = _empty(logp, shape, dtype) if value is None else value
        coef = _empty(logp, shape, dtype) if coef is None else coef
    fields = _klgrad.evaluate(spec, logp, args[0], args[1], mask, offsets, tokens, sequences,
                              nonfinite, value, coef)
    return Result((value, coef) + tuple(fields))


_COMPUTE = {"float64": "float64", "float32": "float32", "float16": "float32",
            "bfloat16": "float32"}


def _grad_as(logits, grad, grad_dtype):
    """grad (float32 for 16-bit logits) as grad_dtype asks: None leaves it, the logits' own
    dtype (or float32) converts it; anything else is refused."""
    if grad_dtype is None or grad is None:
        return grad
    if _is_tensor(grad):
        allowed = (logits.dtype, _torch().float32)
        if grad_dtype in allowed:
            return grad.to(grad_dtype)
    else:
        allowed = (logits.dtype, _np.dtype(_np.float32))
        try:
            if _np.dtype(grad_dtype) in allowed:
                return grad.astype(grad_dtype, copy=False)
        except TypeError:
            pass
    raise ValueError(f"grad_dtype={grad_dtype!r}: the gradient comes as float32 or in the "
                     f"logits' dtype ({logits.dtype}); pass None, float32 or "
                     f"logits.dtype")


def _row_shape(logits):
    return tuple(logits.shape[:-1]) if getattr(logits, "ndim", 0) in (2, 3) else None


def explain(spec):
    """The verdict on a spec as a dict: the JSON `klgrad explain --spec S` prints (which
    gradient it follows on- and off-policy, on one state and over sequences)."""
    import json
    return json.loads(_klgrad.explain(_spec_of(spec)))


def from_trainer_config(name, mapping):
    """What a trainer's own KL configuration follows, as a dict: the JSON `klgrad explain
    --trainer NAME --config FILE` prints ("trainer", "terms" with each term's role, spec, beta
    and verdict, "defaults_used", "warnings"). name: verl, openrlhf, trl, nemo-rl, slime,
    open-instruct, roll or easyr1. mapping: for verl, trl, nemo-rl, roll and easyr1 a dict
    (the trainer's YAML or JSON as loaded, nested); for openrlhf, slime and open-instruct the
    command line, a list of its words or one str. Raises ValueError naming the key and value
    the trainer or klgrad refuses (docs/explain.md)."""
    import json
    if isinstance(mapping, str):
        text = _klgrad.from_trainer_config(name, "command_line", mapping)
    elif isinstance(mapping, (list, tuple)):
        for i, word in enumerate(mapping):
            if not isinstance(word, str):
                raise TypeError(f"from_trainer_config: mapping[{i}] must be a str (a word of "
                                f"the command line), got {type(word).__name__}")
        text = _klgrad.from_trainer_config(name, "argv", json.dumps(list(mapping)))
    elif isinstance(mapping, dict):
        text = _klgrad.from_trainer_config(name, "mapping", json.dumps(mapping))
    else:
        raise TypeError("from_trainer_config: mapping must be a dict (the trainer's YAML as "
                        "loaded), a list of command-line words or a str, got "
                        f"{type(mapping).__name__}")
    return json.loads(text)


def audit(policy, spec, sampling="policy", mc=None, seed=0, max_memory=1 << 30):
    """The report of `klgrad audit` as a dict: the exact expected gradient of the spec's
    coefficients on a small tabular policy against the exact gradients of KL(pi||ref) and
    KL(ref||pi) (docs/audit.md). policy: the policy file's JSON as a dict ({"vocab", "steps",
    "logits", "ref_logits", optional "behavior_logits"}) or the path of such a file;
    sampling: "policy" or "behavior"; mc: Monte Carlo samples (None: none); max_memory: the
    bytes the enumeration may use (refused with the size needed above it, as the CLI's
    --max-memory)."""
    import json
    import os
    if isinstance(policy, (str, os.PathLike)):
        with open(policy) as f:
            text = f.read()
    else:
        text = json.dumps(policy)
    return json.loads(_klgrad.audit(text, _spec_of(spec), sampling, 0 if mc is None else mc,
                                    seed, max_memory))


class LogitsResult:
    """What logits_divergence() returns: value per row (N or B x T), grad (logits' shape, or
    None), indices (top-k only), and the summary loss, mean, rows, sequences."""

    __slots__ = ("value", "grad", "indices", "loss", "mean", "rows", "sequences")

    def __init__(self, fields):
        (self.value, self.grad, self.indices, self.loss, self.mean, self.rows,
         self.sequences) = fields

    def __repr__(self):
        return (f"klgrad.LogitsResult(loss={self.loss!r}, mean={self.mean!r}, "
                f"rows={self.rows}, sequences={self.sequences})")


def logits_divergence(logits, ref_logits, *, divergence="reverse-kl", lam=0.5, top_k=None,
                      temperature=1.0, mask=None, log_probs=False, gradient=True,
                      grad_dtype=None):
    """The exact per-row divergence between softmax(logits / temperature) and
    softmax(ref_logits / temperature) over the full vocabulary (reverse-kl, forward-kl,
    jensen-shannon with the reference's share lam), or a top-k form with top_k
    (forward-kl-top-k, reverse-kl-top-k, forward-kl-top-k-tail, reverse-kl-top-k-tail;
    docs/logits.md; indices: K, the reference's top k or, for the reverse forms, the
    policy's), and with
    gradient=True its exact gradient with respect to logits (of the loss: the mean over
    valid rows). logits: N x V or B x T x V; mask: N or B x T (nonzero = valid).
    16-bit logits (torch.bfloat16, torch.float16, numpy.float16; ref_logits of the same
    dtype) are read in place and widened to float32: value and grad are float32, or grad in
    the logits' dtype with grad_dtype=logits.dtype (docs/logits.md)."""
    z, zr = _crossing(logits, "logits"), _crossing(ref_logits, "ref_logits")
    m = _row_mask(mask)
    compute, rows = _COMPUTE.get(_dtype_name(z)), _row_shape(z)
    value = grad = indices = None
    if compute is not None and rows is not None:  # else the binding refuses logits, naming it
        value = _empty(z, rows, compute)
        grad = _empty(z, tuple(z.shape), compute) if gradient else None
        if top_k is not None and isinstance(top_k, int) and 0 < top_k <= z.shape[-1]:
            indices = _empty(z, rows + (top_k,), "int64")
    fields = _klgrad.logits_divergence(z, zr, divergence, lam, top_k, temperature, m,
                                       log_probs, value, grad, indices)
    return LogitsResult((value, _grad_as(logits, grad, grad_dtype), indices) + tuple(fields))


def _sampled_args(logits, ids, mask):
    z = _crossing(logits, "logits")
    m = _row_mask(mask)
    return z, _int64_of(_crossing(ids, "ids")), m


def selective_log_softmax(logits, ids, *, mask=None, temperature=1.0):
    """log softmax(logits / temperature)[ids] per row, in one streaming pass per row (the
    softmax is never formed). logits: N x V or B x T x V; ids and mask: N or B x T. 16-bit
    logits (torch.bfloat16, torch.float16, numpy.float16) give float32."""
    z, y, m = _sampled_args(logits, ids, mask)
    compute, rows = _COMPUTE.get(_dtype_name(z)), _row_shape(z)
    out = _empty(z, rows, compute) if compute and rows is not None else None
    _klgrad.selective_log_softmax(z, y, m, temperature, out)
    return out


def sampled_logits_gradient(logits, ids, coef, *, mask=None, temperature=1.0, grad_dtype=None):
    """coef (d loss / d logp per row, e.g. evaluate()'s coef) back-propagated through
    log softmax(logits / temperature)[ids]: coef * (onehot(ids) - softmax) / temperature,
    of the logits' shape. 16-bit logits (torch.bfloat16, torch.float16, numpy.float16) take
    coef in float32 or their own dtype and give a float32 gradient, or one in the logits'
    dtype with grad_dtype=logits.dtype."""
    z, y, m = _sampled_args(logits, ids, mask)
    c = _crossing(coef, "coef")
    compute = _COMPUTE.get(_dtype_name(z))
    if compute == "float32" and _dtype_name(z) != "float32" and _dtype_name(c) == _dtype_name(z):
        c = c.float() if _is_tensor(c) else c.astype(_np.float32)  # 16-bit coef, N entries
    grad = (_empty(z, tuple(z.shape), compute)
            if compute and _row_shape(z) is not None else None)
    _klgrad.sampled_logits_gradient(z, y, c, m, temperature, grad)
    return _grad_as(logits, grad, grad_dtype)
