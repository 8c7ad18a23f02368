"""klgrad in a PyTorch trainer: the KL term as an autograd Function whose gradient to logp
is klgrad's exact coefficient, the detached in-reward penalty, the exact full-vocabulary
divergence of logits, and the data-parallel counts. CPU tensors, float32 or float64 (logits
also bfloat16 or float16, widened to float32 by the kernels).
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


class _KernelLoss(torch.autograd.Function):
    """loss = one kernel call's loss; d loss / d input = the gradient that same call wrote.

    The gradient is handed to backward without a copy: the first backward takes it from ctx
    (scaled in place when grad_output is not 1), so no pass over it and no new tensor. A
    second backward through a retained graph (retain_graph=True) finds it taken and runs the
    kernel again on the saved inputs. Subclasses define kernel(*args) -> (loss, value, grad).
    """

    @classmethod
    def forward(cls, ctx, x, *args):
        loss, value, grad = cls.kernel(x.detach(), *args)
        ctx.gradient = grad
        ctx.save_for_backward(x)  # for a second backward only (version-checked, no copy)
        ctx.kernel, ctx.args = cls.kernel, args
        ctx.mark_non_differentiable(value)
        # 16-bit logits: the loss in float32, as the kernels computed it (value is float32).
        return torch.tensor(loss, dtype=value.dtype), value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        grad, ctx.gradient = ctx.gradient, None
        if grad is None:
            (x,) = ctx.saved_tensors
            grad = ctx.kernel(x.detach(), *ctx.args)[2]
        scale = float(grad_loss)
        if scale != 1.0:
            grad.mul_(scale)
        if grad.dtype != ctx.saved_tensors[0].dtype:  # 16-bit logits: float32 grad rounded
            grad = grad.to(ctx.saved_tensors[0].dtype)
        # Everything but x is data: nothing flows into ref, behavior, ref_logits (for
        # is=differentiable the weight's derivative is already in the coefficient).
        return (grad,) + (None,) * len(ctx.args)


class _KLLoss(_KernelLoss):
    @staticmethod
    def kernel(logp, spec, ref, behavior, mask, offsets, tokens, sequences):
        r = klgrad.evaluate(spec, logp, ref, behavior=behavior, mask=mask, offsets=offsets,
                            tokens=tokens, sequences=sequences)
        return r.loss, r.value, r.coef


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


class _LogitsLoss(_KernelLoss):
    @staticmethod
    def kernel(logits, ref_logits, divergence, mask, temperature, lam, top_k):
        r = klgrad.logits_divergence(logits, ref_logits, divergence=divergence, lam=lam,
                                     top_k=top_k, temperature=temperature, mask=mask)
        return r.loss, r.value, r.grad


def logits_loss(logits, ref_logits, *, divergence="reverse-kl", mask=None, temperature=1.0,
                lam=0.5, top_k=None):
    """(loss, value): the exact full-vocabulary divergence between softmax(logits / tau) and
    softmax(ref_logits / tau) (on-policy distillation, GKD), loss the mean over valid rows
    as a 0-dim tensor whose gradient to logits is the kernel's exact gradient (nothing flows
    into ref_logits), value the detached per-row divergence. divergence and top_k as
    klgrad.logits_divergence (the top-k forms: forward-kl-top-k, reverse-kl-top-k,
    forward-kl-top-k-tail, reverse-kl-top-k-tail)."""
    return _LogitsLoss.apply(logits, _detached(ref_logits), divergence, mask, temperature, lam,
                             top_k)
