"""klgrad in a PyTorch trainer: the KL term as an autograd Function whose gradient to logp
is klgrad's exact coefficient, the detached in-reward penalty, the exact full-vocabulary
divergence of logits, and the data-parallel counts. CPU tensors, float32 or float64.
"""
import torch

import klgrad

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


class _KLLoss(torch.autograd.Function):
    """loss = klgrad's batch loss; d loss / d logp = coef (saved by the one kernel call)."""

    @staticmethod
    def forward(ctx, logp, spec, ref, behavior, mask, offsets, tokens, sequences):
        r = klgrad.evaluate(spec, logp.detach(), ref, behavior=behavior, mask=mask,
                            offsets=offsets, tokens=tokens, sequences=sequences)
        ctx.save_for_backward(r.coef)
        ctx.mark_non_differentiable(r.value)
        return torch.tensor(r.loss, dtype=logp.dtype), r.value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        (coef,) = ctx.saved_tensors
        # ref and behavior are data: nothing flows into them (the weight's derivative for
        # is=differentiable is already in coef).
        return grad_loss * coef, None, None, None, None, None, None, None


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def kl_loss(spec, logp, ref, *, behavior=None, mask=None, offsets=None, tokens=None,
            sequences=None, process_group=None):
    """(loss, value): loss a 0-dim tensor whose gradient with respect to logp is klgrad's
    coef for the spec; value the detached per-token value to log. With process_group= (a
    torch.distributed group, or True for the default group) the local token and sequence
    counts are all-reduced first, so that each shard's gradient is its share of the
    unsharded batch's."""
    spec = klgrad._spec_of(spec)
    if process_group is not None:
        if tokens is not None or sequences is not None:
            raise ValueError("pass either process_group= or tokens=/sequences=, not both")
        tokens, sequences = global_counts(
            logp, mask=mask, offsets=offsets,
            process_group=None if process_group is True else process_group)
    return _KLLoss.apply(logp, spec, _detached(ref), _detached(behavior), mask, offsets,
                         tokens, sequences)


def kl_penalty(spec, logp, ref, *, behavior=None, mask=None, offsets=None):
    """The detached per-token penalty beta * value for reward shaping (in-reward placements:
    the trainer subtracts it from each token's reward). Masked tokens get 0."""
    spec = klgrad._spec_of(spec)
    r = klgrad.evaluate(spec, _detached(logp), _detached(ref), behavior=_detached(behavior),
                        mask=mask, offsets=offsets)
    return r.value * spec.beta


class _LogitsLoss(torch.autograd.Function):
    """loss = the mean divergence over valid rows; d loss / d logits = the kernel's exact
    gradient (saved by the one kernel call)."""

    @staticmethod
    def forward(ctx, logits, ref_logits, divergence, mask, temperature, lam, top_k):
        r = klgrad.logits_divergence(logits.detach(), ref_logits, divergence=divergence,
                                     lam=lam, top_k=top_k, temperature=temperature, mask=mask)
        ctx.save_for_backward(r.grad)
        ctx.mark_non_differentiable(r.value)
        return torch.tensor(r.loss, dtype=logits.dtype), r.value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None, None, None, None, None, None


def logits_loss(logits, ref_logits, *, divergence="reverse-kl", mask=None, temperature=1.0,
                lam=0.5, top_k=None):
    """(loss, value): the exact full-vocabulary divergence between softmax(logits / tau) and
    softmax(ref_logits / tau) (on-policy distillation, GKD), loss the mean over valid rows
    as a 0-dim tensor whose gradient to logits is the kernel's exact gradient (nothing flows
    into ref_logits), value the detached per-row divergence."""
    return _LogitsLoss.apply(logits, _detached(ref_logits), divergence, mask, temperature, lam,
                             top_k)
