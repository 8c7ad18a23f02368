"""klgrad in a PyTorch trainer: the KL term as a loss whose gradient to logp is klgrad's
exact coefficient, the detached in-reward penalty, the exact full-vocabulary divergence of
logits, and the data-parallel counts. kl_loss, kl_penalty and logits_loss each call one
torch.library custom op (klgrad::kl_loss, klgrad::kl_penalty, klgrad::logits_loss, defined
in klgrad._ops), so torch.compile traces them. CPU tensors, float32 or float64 (logits also
bfloat16 or float16, widened to float32 by the kernels); logits_loss also CUDA tensors
(float32, bfloat16, float16), computed by the Triton kernels.
"""
import torch

import klgrad
from klgrad import _ops

__all__ = ["kl_loss", "kl_penalty", "logits_loss", "global_counts"]


def _local_counts(logp, mask, offsets):
    """(valid tokens, non-empty sequences) of this shard's batch."""
    valid = None if mask is None else torch.as_tensor(mask) != 0
    if offsets is None:  # padded B x T
        if valid is None:
            rows, positions = logp.shape
            return rows * positions, rows if positions > 0 else 0
        return int(valid.sum()), int(valid.any(dim=1).sum())
    offsets = torch.as_tensor(offsets, dtype=torch.int64)
    if valid is None:
        lengths = offsets[1:] - offsets[:-1]
        return int(offsets[-1]), int((lengths > 0).sum())
    running = torch.cat([torch.zeros(1, dtype=torch.int64), valid.to(torch.int64).cumsum(0)])
    per_sequence = running[offsets[1:]] - running[offsets[:-1]]
    return int(per_sequence.sum()), int((per_sequence > 0).sum())


def global_counts(logp, *, mask=None, offsets=None, process_group=None):
    """(tokens, sequences) summed over the process group's shards, for evaluate()'s tokens=
    and sequences=: each shard's coefficients then equal the unsharded batch's. None for a
    count that is 0 over the whole group (nothing to divide)."""
    import torch.distributed as dist

    counts = torch.tensor(_local_counts(logp, mask, offsets), dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
    tokens, sequences = (int(c) if c > 0 else None for c in counts)
    return tokens, sequences


def _detached(x):
    """A tensor input that carries no gradient: a tensor detached, anything else (a numpy
    array, a list) as a tensor over the same memory where it can be, None as None."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(x)


def _spec_text(spec):
    """The string the ops take: a spec string as given (the op parses it once per distinct
    string, raising SpecError for a bad one), a klgrad.Spec as its canonical str(spec)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, klgrad.Spec):
        return str(spec)
    raise TypeError(f"spec= must be a klgrad.Spec or a spec string, got {type(spec).__name__}")


def kl_loss(spec, logp, ref, *, behavior=None, mask=None, offsets=None, tokens=None,
            sequences=None, process_group=None):
    """(loss, value): loss a 0-dim tensor whose gradient with respect to logp is klgrad's
    coef for the spec; value the detached per-token value to log. One call of the custom op
    klgrad::kl_loss (torch.compile traces it with no graph break; docs/python.md). With
    process_group= (a torch.distributed group, or True for the default group) the local
    token and sequence counts are all-reduced first, so that each shard's gradient is its
    share of the unsharded batch's."""
    text = _spec_text(spec)
    if process_group is not None:
        if tokens is not None or sequences is not None:
            raise ValueError("pass either process_group= or tokens=/sequences=, not both")
        tokens, sequences = global_counts(
            logp, mask=mask, offsets=offsets,
            process_group=None if process_group is True else process_group)
    loss, value, _ = _ops.kl_loss_op(logp, _detached(ref), text, _detached(behavior),
                                     _detached(mask), _detached(offsets), tokens, sequences)
    return loss, value


def kl_penalty(spec, logp, ref, *, behavior=None, mask=None, offsets=None):
    """The detached per-token penalty beta * value for reward shaping (in-reward placements:
    the trainer subtracts it from each token's reward). Masked tokens get 0. The custom op
    klgrad::kl_penalty."""
    return _ops.kl_penalty_op(_detached(logp), _detached(ref), _spec_text(spec),
                              _detached(behavior), _detached(mask), _detached(offsets))


def logits_loss(logits, ref_logits, *, divergence="reverse-kl", mask=None, temperature=1.0,
                lam=0.5, top_k=None, backend="auto"):
    """(loss, value): the exact full-vocabulary divergence between softmax(logits / tau) and
    softmax(ref_logits / tau) (on-policy distillation, GKD), loss the mean over valid rows
    as a 0-dim tensor whose gradient to logits is the kernel's exact gradient (nothing flows
    into ref_logits), value the detached per-row divergence. divergence and top_k as
    klgrad.logits_divergence (the top-k forms: forward-kl-top-k, reverse-kl-top-k,
    forward-kl-top-k-tail, reverse-kl-top-k-tail). 16-bit logits: loss and value float32,
    the gradient in the logits' dtype. backend: "auto" (the Triton kernels on CUDA
    tensors, the C++ kernel on the CPU), "kernel" or "triton" (klgrad.logits_divergence).
    One call of the custom op klgrad::logits_loss."""
    loss, value, _ = _ops.logits_loss_op(logits, _detached(ref_logits), divergence,
                                         _detached(mask), float(temperature), float(lam),
                                         top_k, backend)
    return loss, value
