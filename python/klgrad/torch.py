"""klgrad in a PyTorch trainer: the KL term as a loss whose gradient to logp is klgrad's
exact coefficient, the detached in-reward penalty, the exact full-vocabulary divergence of
logits, the same of a linear head's logits without holding them (linear_logits_loss,
klgrad.linear), and the data-parallel counts. kl_loss, kl_penalty, logits_loss and
linear_logits_loss each call one torch.library custom op (klgrad::kl_loss,
klgrad::kl_penalty, klgrad::logits_loss in klgrad._ops, klgrad::linear_logits_loss in
klgrad.linear), so torch.compile traces them. Tensors float32 or float64 (logits also
bfloat16 or float16, widened to float32 by the kernels); kl_loss and kl_penalty on any
device: backend="auto" takes the C++ kernel for CPU tensors and the device path
(klgrad.device) for others, backend="kernel" or "device" forces one (docs/python.md,
"Devices"); logits_loss and linear_logits_loss on CUDA tensors (float32, bfloat16,
float16) take the Triton kernels.
"""
import torch

import klgrad
from klgrad import _ops, device
from klgrad.linear import linear_logits_loss

__all__ = ["kl_loss", "kl_penalty", "logits_loss", "linear_logits_loss", "global_counts"]


def global_counts(logp, *, mask=None, offsets=None, process_group=None):
    """(tokens, sequences) summed over the process group's shards, for evaluate()'s tokens=
    and sequences=: each shard's coefficients then equal the unsharded batch's. None for a
    count that is 0 over the whole group (nothing to divide). The local counts are counted
    and all-reduced as a tensor on logp's device (NCCL for GPU tensors, gloo for CPU ones);
    the two sums then cross to the host, the call's one synchronisation."""
    import torch.distributed as dist

    counts = device.counts(logp, mask, offsets)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
    tokens, sequences = (c if c > 0 else None for c in counts.tolist())
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
            sequences=None, process_group=None, backend="auto"):
    """(loss, value): loss a 0-dim tensor whose gradient with respect to logp is klgrad's
    coef for the spec; value the detached per-token value to log. One call of the custom op
    klgrad::kl_loss (torch.compile traces it with no graph break; docs/python.md). With
    process_group= (a torch.distributed group, or True for the default group) the local
    token and sequence counts are all-reduced first, so that each shard's gradient is its
    share of the unsharded batch's. backend: "auto", "kernel" or "device" (module doc)."""
    text = _spec_text(spec)
    if process_group is not None:
        if tokens is not None or sequences is not None:
            raise ValueError("pass either process_group= or tokens=/sequences=, not both")
        tokens, sequences = global_counts(
            logp, mask=mask, offsets=offsets,
            process_group=None if process_group is True else process_group)
    loss, value, _ = _ops.kl_loss_op(logp, _detached(ref), text, _detached(behavior),
                                     _detached(mask), _detached(offsets), tokens, sequences,
                                     backend)
    return loss, value


def kl_penalty(spec, logp, ref, *, behavior=None, mask=None, offsets=None, backend="auto"):
    """The detached per-token penalty beta * value for reward shaping (in-reward placements:
    the trainer subtracts it from each token's reward). Masked tokens get 0. The custom op
    klgrad::kl_penalty; backend as kl_loss's."""
    return _ops.kl_penalty_op(_detached(logp), _detached(ref), _spec_text(spec),
                              _detached(behavior), _detached(mask), _detached(offsets),
                              backend)


def logits_loss(logits, ref_logits, *, divergence="reverse-kl", mask=None, temperature=1.0,
                lam=0.5, top_k=None, backend="auto", process_group=None):
    """(loss, value): the exact full-vocabulary divergence between softmax(logits / tau) and
    softmax(ref_logits / tau) (on-policy distillation, GKD), loss the mean over valid rows
    as a 0-dim tensor whose gradient to logits is the kernel's exact gradient (nothing flows
    into ref_logits), value the detached per-row divergence. divergence and top_k as
    klgrad.logits_divergence (the top-k forms: forward-kl-top-k, reverse-kl-top-k,
    forward-kl-top-k-tail, reverse-kl-top-k-tail). 16-bit logits: loss and value float32,
    the gradient in the logits' dtype. backend: "auto" (the Triton kernels on CUDA
    tensors, the C++ kernel on the CPU), "kernel" or "triton" (klgrad.logits_divergence).
    One call of the custom op klgrad::logits_loss. process_group= (a torch.distributed
    group, or True for the default one): the logits are this rank's contiguous slice of the
    vocabulary (tensor parallelism), the loss and value the full vocabulary's, the gradient
    this slice's (klgrad.shards; eager, no custom op; no backend=)."""
    if process_group is not None:
        if backend != "auto":
            raise ValueError("process_group= runs the vocabulary shards' own path (torch "
                             "operations on the logits' device): pass no backend= with it")
        from klgrad import shards
        return shards.logits_loss(logits, ref_logits, divergence=divergence, mask=mask,
                                  temperature=temperature, lam=lam, top_k=top_k,
                                  process_group=process_group)
    loss, value, _ = _ops.logits_loss_op(logits, _detached(ref_logits), divergence,
                                         _detached(mask), float(temperature), float(lam),
                                         top_k, backend)
    return loss, value
