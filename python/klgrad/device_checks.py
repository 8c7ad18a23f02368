"""The device path's checks of klgrad.evaluate's arguments, in the words and the order of the
C++ kernel's (python/src/evaluate.cpp, include/klgrad/views/batch.hpp,
include/klgrad/kernel/chunk.hpp and run.hpp; the kernel's messages are the reference, and
python/tests/test_device.py compares them).

What the tensors' metadata tells (dtypes, shapes, devices, the counts given) is checked on
the host before anything runs. What only their data tells (offsets, non-finite inputs,
global counts below the batch's own) becomes a few device flags (`Check.flags`) that cross
with the summary (`Check.raise_for`, which then locates the culprit, on the error path
only) or that torch._assert_async checks on the device (`Check.assert_async`).
"""
import math

import torch

from ._klgrad import InputError, NonFiniteError, ShapeError

__all__ = ["checked", "require_output", "Check"]

# The kernel's chunk (kernel/chunk.hpp, chunk_size): an unweighted batch reports a non-finite
# behaviour log-prob only in a chunk where the log-ratio is not finite.
_CHUNK = 256
_FLAGS = ("offsets", "nonfinite", "tokens", "sequences")


def _shape(x):
    return str(tuple(x.shape))


def _matrix(x):
    """The kernel's "BxT" of a padded array, "1xN" of a packed one."""
    rows, cols = (1, x.shape[0]) if x.dim() == 1 else tuple(x.shape)
    return f"{rows}x{cols}"


def _dtype(x):
    return str(x.dtype).replace("torch.", "")


def _require_like_logp(x, name, logp):
    if x.dtype != logp.dtype:
        raise TypeError(f"{name}= has dtype {_dtype(x)} but logp= has dtype {_dtype(logp)}; "
                        f"pass them in one dtype (float32 or float64)")
    if x.dim() != logp.dim():
        raise ShapeError(f"{name}= has shape {_shape(x)} but logp= has shape {_shape(logp)}")


def _require_tensor(x, name, logp):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}= must be a torch tensor on the device path "
                        f"(backend=\"device\"), got {type(x).__name__}")
    if logp is not None and x.device != logp.device:
        raise TypeError(f"{name}= is on device {x.device} but logp= is on device "
                         f"{logp.device}; the device path computes where logp is")


def _count(x, name):
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{name}= must be a positive int (the count over every shard of a "
                         f"data-parallel batch) or None, got {x!r}")
    return x


def require_output(x, name, logp):
    """An output tensor to write into (evaluate()'s value=, coef=): None, or logp's dtype and
    shape on logp's device."""
    if x is None:
        return
    _require_tensor(x, name, logp)
    _require_like_logp(x, name, logp)
    if x.shape != logp.shape:
        raise ShapeError(f"{name}= has shape {_shape(x)} but logp= has shape {_shape(logp)}")


def checked(spec, logp, ref, behavior, mask, offsets, tokens, sequences, nonfinite):
    """The metadata checks of evaluate.cpp's checked_call and of the batch views, in their
    order; returns the Check that holds what the data checks need."""
    _require_tensor(logp, "logp", None)
    if logp.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"logp= has dtype {_dtype(logp)}; klgrad computes in float32 or "
                        f"float64 (cast bfloat16/float16 log-probs with .float() first)")
    packed = offsets is not None
    if logp.dim() != (1 if packed else 2):
        raise ShapeError(f"logp= has shape {_shape(logp)}"
                         + ("; a packed batch (offsets= given) takes 1-D arrays of N tokens"
                            if packed else "; a padded batch takes B x T arrays (pass offsets= "
                            "for a packed batch of 1-D arrays)"))
    _require_tensor(ref, "ref", logp)
    _require_like_logp(ref, "ref", logp)
    if behavior is not None:
        _require_tensor(behavior, "behavior", logp)
        _require_like_logp(behavior, "behavior", logp)
    if mask is not None:
        _require_tensor(mask, "mask", logp)
        if mask.dim() != logp.dim():
            raise ShapeError(f"mask= has shape {_shape(mask)} but logp= has shape "
                             f"{_shape(logp)}")
    if packed:
        _require_tensor(offsets, "offsets", None)
        if offsets.dim() != 1:
            raise ShapeError(f"offsets= has shape {_shape(offsets)}; offsets of a packed batch "
                             f"are 1-D (B + 1 entries)")
        if offsets.dtype != torch.int64:
            raise TypeError(f"offsets= has dtype {_dtype(offsets)}; offsets are int64")
    _count(tokens, "tokens")
    _count(sequences, "sequences")
    if nonfinite not in ("raise", "propagate"):
        raise ValueError(f"nonfinite= must be \"raise\" or \"propagate\", got \"{nonfinite}\"")
    return _batch_checked(Check(spec, logp, ref, behavior, mask, offsets, tokens, sequences,
                                nonfinite))


def _batch_checked(check):
    """The batch views' shape checks (views/batch.hpp), then the missing behaviour
    (kernel/run.hpp) where the offsets cannot come before it."""
    logp = check.logp
    if check.offsets is None:
        for x, name in ((check.ref, "ref"), (check.mask, "mask"), (check.behavior, "behavior")):
            if x is not None and x.shape != logp.shape:
                raise ShapeError(f"shape mismatch: logp is {_matrix(logp)} but {name} is "
                                 f"{_matrix(x)}")
    else:
        if check.offsets.numel() == 0:
            raise ShapeError("offsets must have at least one entry (B + 1 entries)")
        for x, name in ((check.ref, "ref"), (check.behavior, "behavior")):
            if x is not None and x.shape != logp.shape:
                raise ShapeError(f"shape mismatch: logp is {_matrix(logp)} but {name} is "
                                 f"{_matrix(x)}")
        if check.mask is not None and check.mask.shape != logp.shape:
            raise ShapeError(f"shape mismatch: logp has {logp.shape[0]} tokens but mask has "
                             f"{check.mask.shape[0]}")
    return check


class Check:
    """A call's arguments, checked for what their metadata tells; the data checks as device
    flags, and their messages."""

    def __init__(self, spec, logp, ref, behavior, mask, offsets, tokens, sequences, nonfinite):
        self.spec, self.logp, self.ref, self.behavior = spec, logp, ref, behavior
        self.mask, self.offsets = mask, offsets
        self.tokens, self.sequences, self.nonfinite = tokens, sequences, nonfinite

    def missing_behavior(self, plan):
        """Whether the kernel refuses the batch for want of behaviour log-probs (a weighted
        spec, no behavior=, a preset that does not default to logp, a non-empty batch)."""
        if not plan.weighted or self.behavior is not None or plan.behavior_is_logp:
            return False
        if self.offsets is None:
            return self.logp.shape[0] > 0 and self.logp.shape[1] > 0
        return self.offsets.numel() > 1 and self.logp.shape[0] > 0

    def flags(self, flat, local_tokens, local_sequences, weighted):
        """The data checks as an int64 tensor of len(_FLAGS), nonzero where one fails."""
        zero = torch.zeros((), dtype=torch.int64, device=flat.logp.device)
        offsets = zero if flat.offsets is None else self._offsets_flag(flat.offsets)
        nonfinite = zero
        if self.nonfinite == "raise":
            bad = ~torch.isfinite(flat.logp - flat.ref)
            if weighted and flat.behavior is not None:
                bad = bad | ~torch.isfinite(flat.behavior)
            nonfinite = (flat.valid & bad).any().to(torch.int64)
        tokens = zero if self.tokens is None else (local_tokens > self.tokens).to(torch.int64)
        sequences = (zero if self.sequences is None
                     else (local_sequences > self.sequences).to(torch.int64))
        return torch.stack([offsets, nonfinite, tokens, sequences])

    def _offsets_flag(self, o):
        return ((o[0] != 0) | (o[-1] != self.logp.shape[0])
                | (o[1:] < o[:-1]).any()).to(torch.int64)

    def raise_missing_behavior(self):
        """The kernel's refusal of a weighted spec without behaviour log-probs, after the
        offsets' (read on this error path only)."""
        if self.offsets is not None and int(self._offsets_flag(self.offsets)):
            self._raise_offsets()
        raise InputError(f"spec '{self.spec}' weights tokens by pi/mu (is={self.spec.weighting})"
                         f" but the batch has no behavior log-probs; pass behavior= (the "
                         f"log-probs of the policy that sampled the tokens)")

    def raise_for(self, flags, tokens, sequences):
        """Raises what the kernel raises for the flags fetched (a list), in its order."""
        found = dict(zip(_FLAGS, flags))
        if found["offsets"]:
            self._raise_offsets()
        if found["nonfinite"]:
            self._raise_nonfinite()
        for name, given, local in (("tokens", self.tokens, tokens),
                                   ("sequences", self.sequences, sequences)):
            if found[name]:
                raise InputError(f"{name}={given} is below this batch's own count, {local}: a "
                                 f"global count covers every shard, this one included (None "
                                 f"counts the local batch)")

    def assert_async(self, flags):
        """The checks on the device, without a transfer: torch._assert_async per flag."""
        for i, what in enumerate(_FLAGS):
            torch._assert_async(flags[i] == 0, f"klgrad: the device path's check of {what} "
                                "failed; call klgrad.evaluate(..., backend=\"device\") on this "
                                "batch for the message that locates it")

    # The error paths: only these read the inputs' data on the host.

    def _raise_offsets(self):
        o = self.offsets.tolist()
        if o[0] != 0:
            raise InputError(f"offsets[0] must be 0, got {o[0]}")
        for b in range(len(o) - 1):
            if o[b + 1] < o[b]:
                raise InputError(f"offsets must be non-decreasing: offsets[{b + 1}] = "
                                 f"{o[b + 1]} < offsets[{b}] = {o[b]}")
        raise ShapeError(f"shape mismatch: offsets end at {o[-1]} but logp has "
                         f"{self.logp.shape[0]} tokens")

    def _raise_nonfinite(self):
        """The first non-finite input the kernel meets (chunk.hpp's find_nonfinite), if any:
        at the first valid token with a non-finite logp, ref or (weighted) behaviour, in
        sequence order; unweighted, a behaviour log-prob counts only in a chunk whose
        log-ratio is not finite."""
        lp, lr = self.logp.detach().cpu().reshape(-1), self.ref.detach().cpu().reshape(-1)
        lb = None if self.behavior is None else self.behavior.detach().cpu().reshape(-1)
        valid = (torch.ones_like(lp, dtype=torch.bool) if self.mask is None
                 else self.mask.detach().cpu().reshape(-1) != 0)
        n = lp.numel()
        starts, sequence = self._sequences_on_host(n)
        position = torch.arange(n) - starts[sequence] if n else torch.zeros(0, dtype=torch.int64)
        weighted = self.spec.weighting != "none"
        bad = ~torch.isfinite(lp) | ~torch.isfinite(lr)
        if lb is not None:
            if weighted:
                bad = bad | ~torch.isfinite(lb)
            else:
                chunk = sequence * (n + 1) + position // _CHUNK
                triggered = chunk[valid & ~torch.isfinite(lp - lr)].unique()
                bad = bad | (~torch.isfinite(lb) & torch.isin(chunk, triggered))
        where = torch.nonzero(valid & bad)
        if where.numel() == 0:
            return  # the log-ratio of finite log-probs overflowed: the guard clamps it
        i = int(where[0])
        for name, x in (("logp", lp), ("ref", lr), ("behavior", lb)):
            if x is not None and not math.isfinite(float(x[i])):
                raise NonFiniteError(
                    f"{name} at sequence {int(sequence[i])}, position {int(position[i])} (flat "
                    f"token {i}) is {_number(float(x[i]))}, not finite, in an unmasked token; "
                    f"mask it out, or pass nonfinite=\"propagate\" to compute anyway")

    def _sequences_on_host(self, n):
        """Each sequence's first flat index and each token's sequence, on the host."""
        if self.offsets is None:
            rows, length = self.logp.shape
            starts = torch.arange(rows) * length
            sequence = torch.arange(n) // max(length, 1)
        else:
            o = self.offsets.detach().cpu()
            starts = o[:-1]
            sequence = torch.bucketize(torch.arange(n), o[1:], right=True)
        return starts, sequence


def _number(v):
    """A non-finite float as the kernel writes it (std::to_chars: nan, -nan, inf, -inf)."""
    if math.isnan(v):
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return "inf" if v > 0 else "-inf"
