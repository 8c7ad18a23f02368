"""klgrad from Python: exact KL values and coefficients d(loss)/d(log pi) for an RL trainer's
sampled tokens, and exact full-vocabulary divergences, from the same C++ headers as the
library (a thin compiled layer, no formula of its own). CPU only; numpy arrays and torch CPU
tensors (float32, float64) cross without copies. See docs/python.md.
"""
import sys

import numpy as _np

from . import _klgrad
from ._klgrad import InputError, NonFiniteError, ShapeError, Spec, SpecError

__version__ = _klgrad.__version__

__all__ = [
    "Spec", "parse_spec", "SpecError", "ShapeError", "InputError", "NonFiniteError",
    "Result", "evaluate", "explain", "from_trainer_config", "audit", "LogitsResult", "logits_divergence",
    "selective_log_softmax", "sampled_logits_gradient", "__version__",
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


def _torch_tensor_type():
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _numpy_view(x, name, floating):
    """A torch CPU tensor as a numpy array over the same memory; other values unchanged.
    Refuses other devices and dtypes naming the argument."""
    tensor = _torch_tensor_type()
    if tensor is None or not isinstance(x, tensor):
        return x
    if x.device.type != "cpu":
        raise TypeError(f"{name}= is on device {x.device}; klgrad computes on the CPU "
                        f"(pass {name}.cpu(), or use a GPU implementation)")
    torch = sys.modules["torch"]
    if floating and x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}= has dtype {x.dtype}; klgrad computes in torch.float32 or "
                        f"torch.float64 (cast with .float() first)")
    if x.dtype in (torch.bfloat16, torch.complex64, torch.complex128) or x.is_quantized:
        raise TypeError(f"{name}= has dtype {x.dtype}, which klgrad does not read")
    return x.detach().numpy()


_NAMES = ("logp", "ref", "behavior", "mask", "offsets", "value", "coef")
_FLOATING = (True, True, True, False, False, True, True)


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
    numpy arrays and torch CPU tensors are read in place; results have logp's type.
    """
    spec = _spec_of(spec)
    if type(logp) is _np.ndarray:
        fields = _klgrad.evaluate(spec, logp, ref, behavior, mask, offsets, tokens, sequences,
                                  nonfinite, value, coef)
        return Result(fields)
    tensor = _torch_tensor_type()
    args = [_numpy_view(x, n, f) for x, n, f in
            zip((logp, ref, behavior, mask, offsets, value, coef), _NAMES, _FLOATING)]
    fields = list(_klgrad.evaluate(spec, args[0], args[1], args[2], args[3], args[4], tokens,
                                   sequences, nonfinite, args[5], args[6]))
    if tensor is not None and isinstance(logp, tensor):
        from_numpy = sys.modules["torch"].from_numpy
        fields[0] = value if value is not None else from_numpy(fields[0])
        fields[1] = coef if coef is not None else from_numpy(fields[1])
    return Result(fields)


def _is_tensor(x):
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(x, tensor)


def _logits_view(x, name):
    """Logits as (numpy array, bf16): a torch.bfloat16 CPU tensor as its 16 bits (numpy has
    no bfloat16; the kernels widen them to float32), a torch.float16 one as numpy float16,
    anything else as _numpy_view gives it."""
    if _is_tensor(x) and x.device.type == "cpu":
        torch = sys.modules["torch"]
        if x.dtype == torch.bfloat16:
            return x.detach().view(torch.int16).numpy(), True
        if x.dtype == torch.float16:
            return x.detach().numpy(), False
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}= has dtype {x.dtype}; klgrad reads torch.float32, "
                            f"torch.float64, torch.bfloat16 or torch.float16 logits")
    return _numpy_view(x, name, True), False


def _is_16bit(x):
    if _is_tensor(x):
        torch = sys.modules["torch"]
        return x.dtype in (torch.bfloat16, torch.float16)
    return isinstance(x, _np.ndarray) and x.dtype == _np.float16


def _grad_as(logits, grad, grad_dtype):
    """grad (float32 for 16-bit logits) as grad_dtype asks: None leaves it, the logits' own
    dtype (or float32) converts it; anything else is refused."""
    if grad_dtype is None or grad is None:
        return grad
    if _is_tensor(grad):
        allowed = (logits.dtype, sys.modules["torch"].float32)
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


def _like(x, result):
    """result (a numpy array or None) as the type of x: a torch tensor for a tensor."""
    if result is None or not _is_tensor(x):
        return result
    return sys.modules["torch"].from_numpy(result)


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
    if _is_tensor(logits) and _is_tensor(ref_logits) and ref_logits.dtype != logits.dtype:
        raise TypeError(f"ref_logits= has dtype {ref_logits.dtype} but logits= has dtype "
                        f"{logits.dtype}")
    (z, bf16), (zr, _) = _logits_view(logits, "logits"), _logits_view(ref_logits, "ref_logits")
    m = _numpy_view(mask, "mask", False)
    fields = list(_klgrad.logits_divergence(z, zr, divergence, lam, top_k, temperature, m,
                                            log_probs, gradient, bf16))
    for i in range(3):
        fields[i] = _like(logits, fields[i])
    fields[1] = _grad_as(logits, fields[1], grad_dtype)
    return LogitsResult(fields)


def selective_log_softmax(logits, ids, *, mask=None, temperature=1.0):
    """log softmax(logits / temperature)[ids] per row, in one streaming pass per row (the
    softmax is never formed). logits: N x V or B x T x V; ids and mask: N or B x T. 16-bit
    logits (torch.bfloat16, torch.float16, numpy.float16) give float32."""
    z, bf16 = _logits_view(logits, "logits")
    y, m = (_numpy_view(x, n, False) for x, n in ((ids, "ids"), (mask, "mask")))
    return _like(logits, _klgrad.selective_log_softmax(z, y, m, temperature, bf16))


def sampled_logits_gradient(logits, ids, coef, *, mask=None, temperature=1.0, grad_dtype=None):
    """coef (d loss / d logp per row, e.g. evaluate()'s coef) back-propagated through
    log softmax(logits / temperature)[ids]: coef * (onehot(ids) - softmax) / temperature,
    of the logits' shape. 16-bit logits (torch.bfloat16, torch.float16, numpy.float16) take
    coef in float32 or their own dtype and give a float32 gradient, or one in the logits'
    dtype with grad_dtype=logits.dtype."""
    z, bf16 = _logits_view(logits, "logits")
    if _is_16bit(logits) and _is_tensor(coef) and coef.dtype == logits.dtype:
        coef = coef.float()  # numpy has no bfloat16: the binding takes 16-bit coef as float32
    y, c, m = (_numpy_view(x, n, f) for x, n, f in
               ((ids, "ids", False), (coef, "coef", True), (mask, "mask", False)))
    grad = _like(logits, _klgrad.sampled_logits_gradient(z, y, c, m, temperature, bf16))
    return _grad_as(logits, grad, grad_dtype)
