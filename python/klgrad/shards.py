"""Vocabulary-parallel shards: klgrad.logits_divergence and klgrad.torch.logits_loss with
process_group=, where each rank's logits hold a contiguous slice of the vocabulary (Megatron's
tensor parallelism: rank r holds columns [offset_r, offset_r + V_r), in rank order) and
every rank gets the exact full-vocabulary value of each row and its own slice's exact
gradient.

This is the device path in torch operations (docs/design.md): the row kernels see a whole
row, so over a shard each row's statistics are made by torch ops and all-reduced: the
maxima (MAX), the sums of exponentials (SUM, float64), then the cross sums (SUM, float64:
sum pi (log pi - log ref) and its kin). With those, the log-probabilities of the shard's
entries are exact and the formulas of docs/logits.md give the value and the slice's
gradient. The top-k forms choose K from every rank's candidates (klgrad.shards_top_k). It
runs on any device torch.distributed serves. Tested with two gloo processes against the
unsharded C++ call for every divergence and top-k form (python/tests/test_shards.py).

Errors agree: a rank that refuses its shard (a shape, a NaN in a valid row) tells the others
in the first collective, and every rank raises, so that no rank is left waiting.
"""
import torch

import klgrad
from klgrad import _grad_as, shards_top_k

__all__ = ["logits_divergence", "logits_loss"]


def group_of(process_group):
    """The torch.distributed group a process_group= argument names (True: the default)."""
    return None if process_group is True else process_group


def _checked_locally(z, zr, valid, divergence, lam, top_k, temperature, log_probs):
    """Everything one rank can check alone, raised as klgrad raises it: the options (by a
    kernel call on no row: the single place that knows them), the shapes and dtypes and the
    mask. Returns the first NaN / +inf entry of a valid row as (name, row, column, value),
    or None."""
    for x, name in ((z, "logits"), (zr, "ref_logits")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}= is a {type(x).__name__}; with process_group= the logits "
                            f"are torch tensors")
    # The binding knows the options; top_k is checked against the whole vocabulary once
    # the ranks' widths are known (_check_top_k), here against no more than this slice.
    klgrad.logits_divergence(z[:0].cpu(), zr[:0].cpu(), divergence=divergence, lam=lam,
                             top_k=_within(top_k, z.shape[-1], divergence),
                             temperature=temperature, log_probs=log_probs, gradient=False)
    if tuple(zr.shape) != tuple(z.shape):
        raise klgrad.ShapeError(f"ref_logits= has shape {tuple(zr.shape)} but logits= has "
                                f"shape {tuple(z.shape)}")
    leading, rows = tuple(z.shape[:-1]), z.numel() // max(z.shape[-1], 1)
    if valid is not None and tuple(valid.shape) not in (leading, (rows,)):
        raise klgrad.ShapeError(f"mask= has shape {tuple(valid.shape)} but logits= has "
                                f"shape {tuple(z.shape)} (one entry per row)")
    for x, name in ((z, "logits"), (zr, "ref_logits")):
        flat = x.reshape(-1, x.shape[-1])
        bad = torch.isnan(flat) | (flat == float("inf"))
        if valid is not None:
            bad &= valid.reshape(-1, 1)
        if bad.any():
            row, column = (int(i) for i in bad.nonzero()[0])
            return name, row, column, float(flat[row, column])
    return None


def _within(top_k, width, divergence):
    """top_k as the slice's binding call checks it: for a top-k form, an int k >= 1 lowered
    to the slice's width (the whole vocabulary's bound is checked once the widths are known,
    by _check_top_k); anything else is the binding's to judge."""
    if top_k is None or divergence not in shards_top_k.FORMS:
        return top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k= must be an int in [1, V] (V: the whole vocabulary, every "
                         f"rank's slice together), got {top_k!r}")
    return min(top_k, max(int(width), 1))


def _check_top_k(top_k, vocabulary):
    if top_k is not None and top_k > vocabulary:
        raise ValueError(f"top_k= must be an int in [1, V] = [1, {vocabulary}], got {top_k} "
                         f"(V: the whole vocabulary, every rank's slice together)")


def _local_failure(z, zr, valid, *options):
    """This rank's refusal, or None: an exception, or a (name, row, column, value) of a NaN
    or +inf entry, whose message waits for the shard's offset."""
    try:
        return _checked_locally(z, zr, valid, *options)
    except (ValueError, TypeError) as e:
        return e


def _agree(failure, width, device, group):
    """(the vocabulary offset of this rank's slice, the whole vocabulary's size), after
    checking that no rank failed: a rank's own failure is raised by that rank (a bad entry
    named by its column in the whole vocabulary), another rank's by this one, naming it."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    # on the logits' device: NCCL gathers CUDA tensors only
    mine = torch.tensor([width, failure is not None], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    offset = sum(int(x[0]) for x in every[:rank])
    if isinstance(failure, Exception):
        raise failure
    if failure is not None:
        name, row, column, value = failure
        raise klgrad.NonFiniteError(f"{name} row {row}, column {offset + column} (rank {rank}'s "
                                    f"column {column}) is {value}; logits must be finite or "
                                    f"-inf")
    failed = [r for r, x in enumerate(every) if x[1]]
    if failed:
        raise klgrad.InputError(f"rank {failed[0]} of the process group refused its shard of "
                                f"the logits (its error names the argument); every rank stops")
    return offset, sum(int(x[0]) for x in every)


def _all_reduce(x, op, group):
    import torch.distributed as dist
    dist.all_reduce(x, op=op, group=group)
    return x


def _log_softmax(x, valid_rows, group, log_probs):
    """log softmax of the whole rows whose slices x holds (2 x rows x V_r: the policy's and
    the reference's): the row maxima, then the sums of exponentials, all-reduced, one
    collective each for both sides. A valid row with no finite entry on any rank is refused
    (the same on every rank: the statistics are global)."""
    import torch.distributed as dist
    if log_probs:  # normalised already: used as they are, as the kernel uses them
        return x
    peak = _all_reduce(x.amax(-1) if x.shape[-1] else x.new_full(x.shape[:-1], -float("inf")),
                       dist.ReduceOp.MAX, group)
    for side, name in enumerate(("logits", "ref_logits")):
        empty = (peak[side] == -float("inf")) & valid_rows
        if empty.any():
            raise klgrad.InputError(f"{name} row {int(empty.nonzero()[0])} has no finite entry "
                                    f"(every logit is -inf), so its softmax is undefined; mask "
                                    f"the row out")
    total = _all_reduce(torch.exp(x - peak.unsqueeze(-1)).sum(-1, dtype=torch.float64),
                        dist.ReduceOp.SUM, group)
    lse = peak.double() + torch.log(total)
    return x - lse.to(x.dtype).unsqueeze(-1)


def _times_log_ratio(p, lp, lq):
    """p (lp - lq) with 0 where p is 0 (0 log 0 = 0, and -inf - -inf is no number)."""
    return torch.where(p > 0, p * (lp - lq), 0)


def _row_sums(terms, group):
    import torch.distributed as dist
    return _all_reduce(terms.sum(-1, dtype=torch.float64), dist.ReduceOp.SUM, group)


def _divergence(divergence, lp, lr, lam, group):
    """(value per row (float64), d value / d (logits / tau) of the slice): docs/logits.md's
    table with the global log-probabilities lp, lr of the slice's entries."""
    p, r = torch.exp(lp), torch.exp(lr)
    if divergence == "forward-kl":
        return _row_sums(_times_log_ratio(r, lr, lp), group), p - r
    if divergence == "reverse-kl":
        value = _row_sums(_times_log_ratio(p, lp, lr), group)
        return value, _times_log_ratio(p, lp, lr + value.to(lp.dtype).unsqueeze(-1))
    log_m = torch.log(lam * r + (1 - lam) * p)
    # KL(ref || M) and KL(pi || M) in one all-reduce
    sums = _row_sums(torch.stack([_times_log_ratio(r, lr, log_m),
                                  _times_log_ratio(p, lp, log_m)]), group)
    value = lam * sums[0] + (1 - lam) * sums[1]
    grad = (1 - lam) * _times_log_ratio(p, lp, log_m + sums[1].to(lp.dtype).unsqueeze(-1))
    return value, grad


def _refuse_infinite_reverse(value, valid_rows, divergence):
    """The kernel's refusal of an infinite reverse divergence's gradient (reverse-kl and its
    top-k forms: ref = 0 where pi has mass), on every rank alike (value is global)."""
    infinite = torch.isinf(value) & valid_rows
    if divergence.startswith("reverse-kl") and infinite.any():
        raise klgrad.InputError(f"ref_logits row {int(infinite.nonzero()[0])} gives zero "
                                f"probability (a -inf logit) to an entry where pi is positive: "
                                f"RKL = +inf and its gradient is undefined")


def _counts(valid, shape):
    """(valid rows, non-empty sequences) as the kernel counts them: a B x T x V batch has B
    sequences, an N x V batch one."""
    rows_shape = shape[:-1]
    mask = (torch.ones(rows_shape, dtype=torch.bool) if valid is None
            else valid.reshape(rows_shape).cpu())
    sequences = mask.reshape(rows_shape[0], -1).any(-1).sum() if len(rows_shape) == 2 else \
        mask.any()
    return int(mask.sum()), int(sequences)


def _rows(logits, ref_logits, valid, compute):
    """(both sides' rows, 2 x N x V_r in the compute dtype, masked rows zeroed: never read;
    the valid rows, N bools)."""
    width = logits.shape[-1]
    both = torch.stack([x.detach().reshape(-1, width).to(compute) for x in (logits, ref_logits)])
    valid_rows = (torch.ones(both.shape[1], dtype=torch.bool, device=both.device)
                  if valid is None else valid.reshape(-1))
    return torch.where(valid_rows.unsqueeze(-1), both, 0), valid_rows


def _top_k_divergence(divergence, raw, lp, lr, top_k, offset, vocabulary, group):
    """(value, d value / d (logits / tau), K) of a top-k form: K chosen from the chooser's
    logits as given (a temperature does not reorder them, and dividing could round two
    apart into a tie)."""
    chooser = raw[0] if shards_top_k.FORMS[divergence] == "policy" else raw[1]
    top = shards_top_k.global_top_k(chooser, top_k, offset, vocabulary, group)
    in_k = shards_top_k.in_top_k(top, offset, raw.shape[-1])
    return shards_top_k.divergence(divergence, lp, lr, in_k, group) + (top,)


def logits_divergence(logits, ref_logits, *, divergence="reverse-kl", lam=0.5, top_k=None,
                      temperature=1.0, mask=None, log_probs=False, gradient=True,
                      grad_dtype=None, process_group=True):
    """klgrad.logits_divergence over a vocabulary shard: logits, ref_logits this rank's
    columns (N x V_r or B x T x V_r, torch tensors, any device); every rank passes the same
    rows, mask and options. value, loss, mean, rows, sequences (and a top-k form's indices,
    K in the whole vocabulary's numbering) are the full vocabulary's; grad is the gradient
    of the loss (the mean over valid rows) with respect to this rank's columns.
    process_group: a torch.distributed group, or True for the default group."""
    group = group_of(process_group)
    device = getattr(logits, "device", "cpu")
    valid = None if mask is None else torch.as_tensor(mask).to(device) != 0
    failure = _local_failure(logits, ref_logits, valid, divergence, lam, top_k, temperature,
                             log_probs)
    offset, vocabulary = _agree(failure, int(logits.shape[-1]) if getattr(logits, "ndim", 0)
                                else 0, device, group)
    _check_top_k(top_k, vocabulary)
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    raw, valid_rows = _rows(logits, ref_logits, valid, compute)
    lp, lr = _log_softmax(raw / temperature, valid_rows, group, log_probs)
    indices = None
    if top_k is None:
        value, d_value = _divergence(divergence, lp, lr, lam, group)
    else:
        value, d_value, top = _top_k_divergence(divergence, raw, lp, lr, top_k, offset,
                                                vocabulary, group)
        indices = torch.where(valid_rows.unsqueeze(-1), top, -1).reshape(
            tuple(logits.shape[:-1]) + (top_k,))
    value = torch.where(valid_rows, value, 0)
    if gradient:
        _refuse_infinite_reverse(value, valid_rows, divergence)
    rows, sequences = _counts(valid, tuple(logits.shape))
    loss = float(value.sum()) / rows if rows else 0.0
    grad = None
    if gradient:
        scale = 1.0 / (rows * temperature) if rows else 0.0
        grad = torch.where(valid_rows.unsqueeze(-1), d_value * scale, 0).reshape(logits.shape)
    value = value.to(compute).reshape(logits.shape[:-1])
    return klgrad.LogitsResult((value, _grad_as(logits, grad, grad_dtype), indices, loss, loss,
                                rows, sequences))


class _ShardLoss(torch.autograd.Function):
    """The loss of logits_divergence over a shard, its gradient the kept slice's."""

    @staticmethod
    def forward(ctx, logits, ref_logits, options):
        r = logits_divergence(logits, ref_logits, grad_dtype=logits.dtype, **options)
        ctx.save_for_backward(r.grad)
        ctx.mark_non_differentiable(r.value)
        return torch.tensor(r.loss, dtype=r.value.dtype, device=logits.device), r.value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None, None


def logits_loss(logits, ref_logits, *, divergence="reverse-kl", mask=None, temperature=1.0,
                lam=0.5, top_k=None, process_group=True):
    """klgrad.torch.logits_loss over a vocabulary shard: (loss, value), loss the
    full-vocabulary mean over valid rows, differentiable to this rank's logits (an
    autograd.Function: a process group is no op argument, so this form is eager)."""
    options = dict(divergence=divergence, mask=mask, temperature=temperature, lam=lam,
                   top_k=top_k, process_group=process_group)
    return _ShardLoss.apply(logits, ref_logits.detach(), options)
