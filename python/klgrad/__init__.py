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


# torch.Tensor and torch.utils.dlpack.to_dlpack, looked up once the caller has imported torch
# (klgrad never imports it): on a small call the lookups cost more than the kernel.
_tensor_type = _to_dlpack = None


def _is_tensor(x):
    global _tensor_type, _to_dlpack
    if _tensor_type is None:
        torch = _torch()
        if torch is None or not hasattr(torch, "Tensor"):
            return False
        _tensor_type, _to_dlpack = torch.Tensor, torch.utils.dlpack.to_dlpack
    return isinstance(x, _tensor_type)


def _is_neg(x):
    """True for a torch tensor with torch's lazy negation bit (tensor.is_neg(), e.g. the .imag
    of a conjugated complex tensor): DLPack exports its memory without the negation."""
    return _is_tensor(x) and x.is_neg()


def _crossing(x, name):
    """x as it crosses to the kernel: a torch tensor detached (nothing flows into klgrad's
    inputs; DLPack refuses a tensor that requires grad), its lazy negation materialised (a
    copy: DLPack would export the memory without it), and refused, naming the argument,
    when it is not on the CPU; another DLPack producer as a numpy view of its memory
    (numpy.from_dlpack, no copy); numpy arrays and None unchanged. The binding reads what
    crosses by DLPack."""
    if _is_tensor(x):
        if not x.is_cpu:
            raise TypeError(f"{name}= is on device {x.device}; klgrad's C++ kernel computes "
                            f"on the CPU (pass {name}.cpu())")
        if x.requires_grad:
            x = x.detach()
        return x.resolve_neg() if x.is_neg() else x
    if x is not None and not isinstance(x, _np.ndarray) and hasattr(x, "__dlpack__"):
        return _np.from_dlpack(x)  # another producer: a numpy view of the same memory
    return x


def _capsule(x):
    """x as the binding reads it: a torch tensor as a DLPack capsule
    (torch.utils.dlpack.to_dlpack), anything else unchanged. The binding's own import of a
    tensor, through its __dlpack__ method, took 8 of the 10 us of a 1 x 1 evaluate call on
    torch 2.13 (measured: 9.7 us with tensors, 1.5 with capsules). A tensor torch will not
    export as it is (to_dlpack raises) crosses as itself, so that the binding refuses it by
    name as before."""
    if _is_tensor(x):
        try:
            return _to_dlpack(x)
        except (RuntimeError, TypeError, BufferError):
            return x
    return x


def _empty(like, shape, dtype):
    """A new array of `shape` in like's framework: a torch tensor for a tensor, else numpy.
    dtype: a numpy dtype name ("float32", "int64", ...)."""
    if _is_tensor(like):
        return _torch().empty(shape, dtype=getattr(_torch(), dtype))
    return _np.empty(shape, dtype=dtype)


def _empty_like(x):
    """A new row-major array of x's shape and dtype in x's framework (a torch tensor on the
    CPU, or numpy)."""
    if _is_tensor(x):
        return _torch().empty_like(x, memory_format=_torch().contiguous_format)
    return _np.empty_like(x, order="C")


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
             sequences=None, nonfinite="raise", value=None, coef=None, backend="auto"):
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
    backend: "auto" (the C++ kernel for CPU tensors and arrays, the device path for torch
    tensors on another device), "kernel" or "device" (klgrad.device: torch operations where
    the tensors are, CPU included; docs/python.md, "Devices").
    """
    spec = _spec_of(spec)
    if uses_device(backend, logp):
        return _evaluate_on_device(spec, logp, ref, behavior, mask, offsets, tokens, sequences,
                                   nonfinite, value, coef)
    logp = _crossing(logp, "logp")
    args = [_crossing(x, n) for x, n in ((ref, "ref"), (behavior, "behavior"))]
    mask, offsets = _mask_of(_crossing(mask, "mask")), _int64_of(_crossing(offsets, "offsets"))
    for out, name in ((value, "value"), (coef, "coef")):
        if _is_neg(out):
            raise ValueError(f"{name}= is a negated view (tensor.is_neg()): klgrad would "
                             f"write the memory under it without the negation; pass a tensor "
                             f"without it")
    if _float_name(logp) is not None:  # else the binding refuses logp, naming it
        value = _empty_like(logp) if value is None else value
        coef = _empty_like(logp) if coef is None else coef
    fields = _klgrad.evaluate(spec, _capsule(logp), _capsule(args[0]), _capsule(args[1]),
                              _capsule(mask), _capsule(offsets), tokens, sequences, nonfinite,
                              _capsule(value), _capsule(coef))
    return Result((value, coef) + tuple(fields))


def _chosen_backend(backend, x, accelerated, runs_on):
    """The backend a call on x runs on: "kernel" or `accelerated` ("device" for the sampled
    paths, "triton" for logits), as backend= asks; "auto" takes `accelerated` for a torch
    tensor that runs_on accepts."""
    if not isinstance(backend, str) or backend not in ("auto", "kernel", accelerated):
        raise ValueError(f'backend= must be "auto", "kernel" or "{accelerated}", '
                         f"got {backend!r}")
    if backend == "auto":
        return accelerated if _is_tensor(x) and runs_on(x) else "kernel"
    return backend


def _off_cpu(x):
    return not x.is_cpu


def _on_cuda(x):
    return x.is_cuda


def uses_device(backend, logp):
    """Whether backend= sends a call with this logp to the device path: "device" always,
    "auto" for a torch tensor that is not on the CPU, "kernel" never."""
    return _chosen_backend(backend, logp, "device", _off_cpu) == "device"


def _evaluate_on_device(spec, logp, ref, behavior, mask, offsets, tokens, sequences,
                        nonfinite, value, coef):
    """evaluate() on the device path (klgrad.device): the kernel's Result, its summary
    fetched in one transfer; value and coef written into the given tensors if any."""
    from . import device, device_checks
    if _is_tensor(logp):  # else the device path refuses logp first
        for out, name in ((value, "value"), (coef, "coef")):
            device_checks.require_output(out, name, logp)
    detached = [x.detach() if _is_tensor(x) else x for x in (logp, ref, behavior, mask)]
    r = device.run(spec, *detached, _int64_of(offsets), tokens, sequences, nonfinite)
    fields = r.fetch()
    value = r.value if value is None else value.copy_(r.value)
    coef = r.coef if coef is None else coef.copy_(r.coef)
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
    _refuse_grad_dtype(logits, grad_dtype)


def _refuse_grad_dtype(logits, grad_dtype):
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
                      grad_dtype=None, grad=None, grad_in_place=False, backend="auto",
                      process_group=None):
    """The exact per-row divergence between softmax(logits / temperature) and
    softmax(ref_logits / temperature) over the full vocabulary (reverse-kl, forward-kl,
    jensen-shannon with the reference's share lam), or a top-k form with top_k
    (forward-kl-top-k, reverse-kl-top-k, forward-kl-top-k-tail, reverse-kl-top-k-tail;
    docs/logits.md; indices: K, the reference's top k or, for the reverse forms, the
    policy's), and with gradient=True its exact gradient with respect to logits (of the
    loss: the mean over valid rows). logits: N x V or B x T x V; mask: N or B x T (nonzero
    = valid). 16-bit logits (torch.bfloat16, torch.float16, numpy.float16; ref_logits of the
    same dtype) are read in place and widened to float32: value and grad are float32, or
    grad in the logits' dtype with grad_dtype=logits.dtype (docs/logits.md).

    The gradient goes to a new array, to grad= (an array of the logits' shape, float32 /
    float64 as the kernel computes or the logits' own dtype), or with grad_in_place=True
    over the logits themselves, with no N x V buffer (each entry written once it has been
    read for the last time; a call that raises for a bad row may leave other rows holding
    their gradients), but for 16-bit logits on the C++ kernel, whose entries cannot hold its
    float gradient: a float32 one is made and copied over them. backend: "kernel" (the C++
    kernel, CPU arrays), "triton" (the Triton kernels: torch tensors on CUDA, or on the CPU
    under TRITON_INTERPRET=1; float32 / bfloat16 / float16 logits, log_probs=False), "auto"
    (Triton for CUDA tensors, else the C++ kernel). Every backend takes the same arguments
    and checks them alike.

    process_group= (a torch.distributed group, or True for the default one): logits and
    ref_logits are this rank's contiguous slice of the vocabulary, value and loss the full
    vocabulary's, grad this slice's (klgrad.shards, torch operations on the logits' device;
    docs/logits.md, "Vocabulary-parallel shards"). It takes no grad=, grad_in_place= or
    backend=."""
    if process_group is not None:
        if grad is not None or grad_in_place or backend != "auto":
            raise ValueError("process_group= runs the vocabulary shards' own path (torch "
                             "operations on the logits' device): pass no grad=, "
                             "grad_in_place= or backend= with it")
        from . import shards
        return shards.logits_divergence(
            logits, ref_logits, divergence=divergence, lam=lam, top_k=top_k,
            temperature=temperature, mask=mask, log_probs=log_probs, gradient=gradient,
            grad_dtype=grad_dtype, process_group=process_group)
    target = _gradient_target(logits, gradient, grad, grad_in_place, grad_dtype)
    call = dict(divergence=divergence, lam=lam, top_k=top_k, temperature=temperature,
                mask=mask, log_probs=log_probs, gradient=gradient, grad_dtype=grad_dtype,
                target=target)
    if _backend_of(backend, logits) == "triton":
        return _triton_divergence(logits, ref_logits, **call)
    return _kernel_divergence(logits, ref_logits, **call)


def _backend_of(backend, logits):
    """The backend a logits_divergence call runs on: "kernel" or "triton" (for "auto":
    Triton for CUDA tensors)."""
    chosen = _chosen_backend(backend, logits, "triton", _on_cuda)
    if chosen == "triton" and not _is_tensor(logits):
        raise TypeError(f"backend='triton' takes torch tensors; logits= is a "
                        f"{type(logits).__name__}")
    return chosen


def _gradient_target(logits, gradient, grad, grad_in_place, grad_dtype):
    """The array the caller has the gradient written into (grad=, or the logits for
    grad_in_place=True), checked, or None for a new one."""
    if not gradient and (grad is not None or grad_in_place):
        raise ValueError("grad= and grad_in_place=True need gradient=True")
    if grad is not None and grad_in_place:
        raise ValueError("pass grad= or grad_in_place=True, not both")
    target, name = (logits, "logits") if grad_in_place else (grad, "grad")
    if target is None:
        return None
    if grad_dtype is not None and grad_dtype != target.dtype:
        raise ValueError(f"grad_dtype={grad_dtype!r} but the gradient goes to {name}= of "
                         f"dtype {target.dtype}; pass grad_dtype=None")
    if grad is not None:
        if tuple(grad.shape) != tuple(logits.shape):
            raise ShapeError(f"grad= has shape {tuple(grad.shape)} but logits= has shape "
                             f"{tuple(logits.shape)}")
        allowed = (_dtype_name(logits), _COMPUTE.get(_dtype_name(logits)))
        if _dtype_name(grad) not in allowed:
            raise TypeError(f"grad= has dtype {_dtype_name(grad)}; the gradient comes in "
                            f"{allowed[1]} or in the logits' dtype ({_dtype_name(logits)})")
    return target


def _kernel_divergence(logits, ref_logits, *, divergence, lam, top_k, temperature, mask,
                       log_probs, gradient, grad_dtype, target):
    """logits_divergence on the C++ kernel. A target in the kernel's own dtype is written
    in place: float32 / float64 logits (grad_in_place) too, contiguous, the kernel writing
    each entry's gradient over it once it has read it for the last time (no N x V buffer).
    A 16-bit target, or non-contiguous logits, get the kernel's gradient copied in."""
    z, zr = _crossing(logits, "logits"), _crossing(ref_logits, "ref_logits")
    m = _row_mask(mask)
    compute, rows = _COMPUTE.get(_dtype_name(z)), _row_shape(z)
    value = grad = indices = None
    over_z = target is logits
    # A negated view (tensor.is_neg()) gets the gradient copied in, as a torch op writes it.
    direct = (target is not None and _dtype_name(target) == compute and not _is_neg(target)
              and (not over_z or _is_contiguous(z)))
    if compute is not None and rows is not None:  # else the binding refuses logits, naming it
        value = _empty(z, rows, compute)
        if gradient and direct:
            grad = z if over_z else _crossing(target, "grad")
        elif gradient:
            grad = _empty(z, tuple(z.shape), compute)
        if top_k is not None and isinstance(top_k, int) and 0 < top_k <= z.shape[-1]:
            indices = _empty(z, rows + (top_k,), "int64")
    fields = _klgrad.logits_divergence(_capsule(z), _capsule(zr), divergence, lam, top_k,
                                       temperature, _capsule(m), log_probs, _capsule(value),
                                       _capsule(grad), _capsule(indices))
    if target is None:
        grad = _grad_as(logits, grad, grad_dtype)
    else:
        if not direct:
            _copy_into(target, grad)
        elif over_z and _is_tensor(target):  # as an in-place torch op would
            _torch().autograd.graph.increment_version(target)
        grad = target
    return LogitsResult((value, grad, indices) + tuple(fields))


def _is_contiguous(x):
    """True for a C-contiguous torch tensor or numpy array."""
    return x.is_contiguous() if _is_tensor(x) else bool(x.flags.c_contiguous)


def _copy_into(target, source):
    """target[...] = source (the kernel's gradient into the caller's array)."""
    if _is_tensor(target):
        target.detach().copy_(_torch().as_tensor(source))
    else:
        _np.copyto(target, source, casting="same_kind")


def _triton_divergence(logits, ref_logits, *, divergence, lam, top_k, temperature, mask,
                       log_probs, gradient, grad_dtype, target):
    """logits_divergence on the Triton kernels (klgrad.triton_logits), the arguments first
    checked by the binding on empty CPU slices of the same dtypes and row shapes."""
    from . import triton_logits

    triton_logits.check_runnable(logits)
    if log_probs:
        raise ValueError("log_probs=True runs on the C++ kernel only (backend='kernel')")
    if not _is_tensor(ref_logits) or (mask is not None and not _is_tensor(mask)):
        raise TypeError("backend='triton' takes torch tensors (ref_logits=, mask=)")
    _check_on_empty(logits, ref_logits, divergence, lam, top_k, temperature, mask)
    # The kernels read and write memory: a lazy negation (tensor.is_neg()) is materialised
    # in an input, and a negated target gets the gradient copied in.
    z = logits.detach().resolve_neg()
    grad = None
    if target is not None:
        grad = (_torch().empty(target.shape, dtype=target.dtype, device=target.device)
                if _is_neg(target) else target.detach())
    elif gradient:  # a new gradient, written by the kernel in the dtype asked for
        dtype = _torch().float32 if grad_dtype is None else grad_dtype
        if dtype not in (_torch().float32, z.dtype):
            _refuse_grad_dtype(logits, grad_dtype)
        grad = _torch().empty(z.shape, dtype=dtype, device=z.device)
    value, indices, loss, rows, sequences = triton_logits.divergence_rows(
        z, ref_logits.detach().resolve_neg(), divergence=divergence, lam=lam, top_k=top_k,
        temperature=temperature, mask=None if mask is None else mask.detach(), grad=grad)
    loss = float(loss)
    if _is_neg(target):
        target.detach().copy_(grad)
    grad = grad if target is None else target
    return LogitsResult((value, grad, indices, loss, loss, int(rows), int(sequences)))


def _check_on_empty(logits, ref_logits, divergence, lam, top_k, temperature, mask):
    """The binding's checks of a call (dtypes, shapes, divergence, top_k, lam, temperature),
    run by the C++ kernel on empty CPU slices: it refuses what it would refuse with the
    data, in the same words, and reads nothing. The shapes it cannot see on a slice (the
    rows of ref_logits and mask) are checked here, in its words."""
    if logits.dim() not in (2, 3):
        raise ShapeError(f"logits= has shape {tuple(logits.shape)}; logits are N x V or "
                         f"B x T x V")
    if tuple(ref_logits.shape) != tuple(logits.shape):
        raise ShapeError(f"ref_logits= has shape {tuple(ref_logits.shape)} but logits= has "
                         f"shape {tuple(logits.shape)}")
    rows = tuple(logits.shape[:-1])
    if mask is not None and tuple(mask.shape) not in (rows, (_np.prod(rows, dtype=int),)):
        raise ShapeError(f"mask= has shape {tuple(mask.shape)} but logits= has shape "
                         f"{tuple(logits.shape)} (one entry per row)")

    def empty(x):
        return _torch().empty((0,) + tuple(x.shape[1:]), dtype=x.dtype)

    # The mask's shape is checked above and any dtype is taken (mask != 0).
    _kernel_divergence(empty(logits), empty(ref_logits), divergence=divergence, lam=lam,
                       top_k=top_k, temperature=temperature, mask=None, log_probs=False,
                       gradient=False, grad_dtype=None, target=None)


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
    _klgrad.selective_log_softmax(_capsule(z), _capsule(y), _capsule(m), temperature,
                                  _capsule(out))
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
    _klgrad.sampled_logits_gradient(_capsule(z), _capsule(y), _capsule(c), _capsule(m),
                                    temperature, _capsule(grad))
    return _grad_as(logits, grad, grad_dtype)
