"""klgrad.torch.linear_logits_loss: the exact full-vocabulary divergence of a language
model's head, softmax((hidden @ weight.T + bias) / tau) against a teacher's, without ever
holding the N x V logits. Rows are taken chunk_rows at a time: each chunk's logits are
computed in the kernels' dtype (float32, float64 for float64 inputs), its divergence and
logit gradient come from klgrad.logits_divergence (the single entry to the row kernels),
and the gradients to hidden, weight and bias are accumulated chunk by chunk in the forward
pass, so backward only scales them (docs/logits.md, "The fused linear form").

The custom op (torch.compile traces it as one node):

    klgrad::linear_logits_loss(Tensor hidden, Tensor weight, Tensor? bias,
        Tensor? ref_logits, Tensor? ref_hidden, Tensor? ref_weight, Tensor? ref_bias,
        str divergence, Tensor? mask, float temperature, float lam, SymInt? top_k,
        SymInt chunk_rows, str? backend)
        -> (Tensor loss, Tensor value, Tensor grad_hidden, Tensor grad_weight,
            Tensor grad_bias)

grad_bias is an empty tensor when there is no bias. Nothing flows into the teacher.
"""
import torch

import klgrad
from klgrad._ops import _scaled

__all__ = ["linear_logits_loss", "linear_logits_loss_op", "default_chunk_rows"]


def _kernel_dtype(x):
    """The dtype the row kernels compute in for inputs of x's dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _Head:
    """A linear head (rows N x H, weight V x H, bias V or None) in the kernels' dtype, whose
    logits are computed a chunk of rows at a time. The weight and bias are converted once
    (no copy when they already have that dtype); a chunk's hidden rows when it is read."""

    def __init__(self, hidden, weight, bias, dtype):
        self.hidden = hidden.reshape(-1, hidden.shape[-1])
        self.weight = weight.to(dtype)
        self.bias = None if bias is None else bias.to(dtype)
        self.dtype = dtype

    def rows(self, start, stop):
        return self.hidden[start:stop].to(self.dtype)

    def logits(self, start, stop):
        h = self.rows(start, stop)
        if self.bias is None:
            return h @ self.weight.T
        return torch.addmm(self.bias, h, self.weight.T)


class _Logits:
    """A teacher given as its logits (N x V, any float dtype): a chunk in the kernels' dtype
    (a copy of the chunk only when the dtypes differ)."""

    def __init__(self, logits, dtype):
        self.values = logits.reshape(-1, logits.shape[-1])
        self.dtype = dtype

    def logits(self, start, stop):
        return self.values[start:stop].to(self.dtype)


def _teacher(ref_logits, ref_hidden, ref_weight, ref_bias, dtype):
    if ref_logits is not None:
        return _Logits(ref_logits, dtype)
    return _Head(ref_hidden, ref_weight, ref_bias, dtype)


def _chunk_starts(rows, chunk_rows):
    # A batch with no row still makes one (empty) kernel call, which refuses a bad
    # divergence, top_k or lam as every other batch does.
    return range(0, rows, chunk_rows) if rows > 0 else range(1)


class _Gradients:
    """The gradients to hidden, weight and bias, accumulated chunk by chunk in the kernels'
    dtype and returned in the inputs' dtypes."""

    def __init__(self, student, hidden, weight, bias):
        self.student, self.hidden, self.weight, self.bias = student, hidden, weight, bias
        dtype = student.dtype
        self.d_hidden = torch.zeros(student.hidden.shape, dtype=hidden.dtype,
                                    device=hidden.device)
        self.d_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
        self.d_bias = (torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
                       if bias is not None else weight.new_empty(0))

    def add(self, start, stop, grad, valid, scale):
        """Adds a chunk's share: grad is d(chunk mean) / d(chunk logits), scale the chunk's
        share of the batch's valid rows. Masked hidden rows are zeroed first: their logits'
        gradient is 0, but 0 * NaN would poison the weight's gradient."""
        h = self.student.rows(start, stop)
        if valid is not None:
            h = torch.where(valid.unsqueeze(-1), h, h.new_zeros(()))
        self.d_hidden[start:stop] = (grad @ self.student.weight).mul_(scale)
        self.d_weight.addmm_(grad.T, h, alpha=scale)
        if self.bias is not None:
            self.d_bias.add_(grad.sum(0), alpha=scale)

    def results(self):
        d_bias = self.d_bias if self.bias is None else self.d_bias.to(self.bias.dtype)
        return (self.d_hidden.reshape(self.hidden.shape), self.d_weight.to(self.weight.dtype),
                d_bias)


def _fused(hidden, weight, bias, ref_logits, ref_hidden, ref_weight, ref_bias, divergence,
           mask, temperature, lam, top_k, chunk_rows, options):
    """(loss, value, grad_hidden, grad_weight, grad_bias), chunk by chunk; options go to
    klgrad.logits_divergence (backend=, process_group=)."""
    dtype = _kernel_dtype(hidden)
    student = _Head(hidden, weight, bias, dtype)
    teacher = _teacher(ref_logits, ref_hidden, ref_weight, ref_bias, dtype)
    rows = student.hidden.shape[0]
    valid = None if mask is None else mask.reshape(-1) != 0
    total = rows if valid is None else int(valid.sum())
    value = torch.zeros(rows, dtype=dtype, device=hidden.device)
    grads = _Gradients(student, hidden, weight, bias)
    # The gradient is written over the chunk's own (new) logits, by the Triton kernels and
    # by the C++ kernel alike (float32 / float64 logits, contiguous): a chunk's logit
    # gradient takes no memory of its own. The shards' path makes its own.
    in_place = "process_group" not in options
    for start in _chunk_starts(rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        chunk_valid = None if valid is None else valid[start:stop]
        r = klgrad.logits_divergence(student.logits(start, stop), teacher.logits(start, stop),
                                     divergence=divergence, lam=lam, top_k=top_k,
                                     temperature=temperature, mask=chunk_valid,
                                     grad_in_place=in_place, **options)
        value[start:stop] = r.value
        if r.rows > 0:
            grads.add(start, stop, r.grad, chunk_valid, r.rows / total)
        del r  # the chunk's gradient goes before the next chunk's logits are made
    loss = value.sum(dtype=torch.float64) / total if total > 0 else value.new_zeros(())
    return (loss.to(dtype), value.reshape(hidden.shape[:-1])) + grads.results()


@torch.library.custom_op("klgrad::linear_logits_loss", mutates_args=(),
                         schema="(Tensor hidden, Tensor weight, Tensor? bias, "
                                "Tensor? ref_logits, Tensor? ref_hidden, Tensor? ref_weight, "
                                "Tensor? ref_bias, str divergence, Tensor? mask, "
                                "float temperature, float lam, SymInt? top_k, "
                                "SymInt chunk_rows, str? backend) "
                                "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def linear_logits_loss_op(hidden, weight, bias, ref_logits, ref_hidden, ref_weight, ref_bias,
                          divergence, mask, temperature, lam, top_k, chunk_rows, backend):
    """(loss, value, grad_hidden, grad_weight, grad_bias): loss the mean divergence over
    valid rows (0-dim, kernel dtype), value per row, and the loss's gradients."""
    return _fused(hidden, weight, bias, ref_logits, ref_hidden, ref_weight, ref_bias,
                  divergence, mask, temperature, lam, top_k, chunk_rows,
                  {} if backend is None else {"backend": backend})


@linear_logits_loss_op.register_fake
def _linear_logits_loss_fake(hidden, weight, bias, ref_logits, ref_hidden, ref_weight,
                             ref_bias, divergence, mask, temperature, lam, top_k, chunk_rows,
                             backend):
    dtype = _kernel_dtype(hidden)
    return (hidden.new_empty((), dtype=dtype), hidden.new_empty(hidden.shape[:-1], dtype=dtype),
            torch.empty_like(hidden), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else weight.new_empty(0))


def _setup(ctx, inputs, output):
    # hidden, weight and bias are saved for their version counters only (an input changed in
    # place before backward is refused, as autograd refuses it).
    ctx.save_for_backward(inputs[0], inputs[1], *output[2:])
    ctx.has_bias = inputs[2] is not None
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, *unused):
    _, _, d_hidden, d_weight, d_bias = ctx.saved_tensors
    return (_scaled(grad_loss, d_hidden), _scaled(grad_loss, d_weight),
            _scaled(grad_loss, d_bias) if ctx.has_bias else None) + (None,) * 11


linear_logits_loss_op.register_autograd(_backward, setup_context=_setup)


# ---- vocabulary-parallel shards: the same loop, eager -------------------------------------

class _ShardedLinear(torch.autograd.Function):
    """The fused form over a vocabulary-parallel head (weight and bias this rank's rows of
    the vocabulary): each chunk through the shards' logits_divergence, then the hidden
    states' gradient all-reduced, since every rank's slice of the logits depends on them.
    An autograd.Function: a process group is no custom-op argument."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, settings, process_group):
        import torch.distributed as dist

        from klgrad.shards import group_of
        loss, value, d_hidden, d_weight, d_bias = _fused(
            hidden, weight, bias, *teacher, **settings,
            options={"process_group": process_group})
        dist.all_reduce(d_hidden, op=dist.ReduceOp.SUM, group=group_of(process_group))
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(value)
        return loss, value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        return (grad_loss * d_hidden, grad_loss * d_weight,
                grad_loss * d_bias if ctx.has_bias else None, None, None, None)


# ---- the Python entry: argument checks, the teacher's form, the default chunk ---------------

def default_chunk_rows(rows, features, vocabulary):
    """The chunk whose logits hold about as many entries as the hidden states (rows x
    features): the fused form's extra memory then stays of the order of its input's."""
    return max(1, -(-rows * features // max(vocabulary, 1)))


def _check_head(hidden, weight, bias, names):
    """Refuses a head whose shapes, dtypes or devices do not fit, naming the argument."""
    h, w, b = names
    for x, name in ((hidden, h), (weight, w), (bias, b)):
        if x is not None and not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            kind = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{name}= must be a floating-point torch tensor, got {kind}")
    if hidden.ndim not in (2, 3):
        raise ValueError(f"{h}= has shape {tuple(hidden.shape)}; hidden states are N x H or "
                         f"B x T x H")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{w}= has shape {tuple(weight.shape)} but {h}= has "
                         f"{hidden.shape[-1]} features; the weight is V x H "
                         f"(torch.nn.Linear's)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{b}= has shape {tuple(bias.shape)}; the bias has V = "
                         f"{weight.shape[0]} entries")
    for x, name in ((weight, w), (bias, b)):
        if x is not None and x.dtype != hidden.dtype:
            raise TypeError(f"{name}= has dtype {x.dtype} but {h}= has {hidden.dtype}")
        if x is not None and x.device != hidden.device:
            raise ValueError(f"{name}= is on {x.device} but {h}= is on {hidden.device}")


def _teacher_args(ref, hidden, weight):
    """(ref_logits, ref_hidden, ref_weight, ref_bias) from ref: the teacher's logits, or a
    (hidden, weight) or (hidden, weight, bias) tuple. Detached: nothing flows into it."""
    if isinstance(ref, (tuple, list)):
        if len(ref) not in (2, 3):
            raise ValueError(f"ref= as a tuple is (hidden, weight) or (hidden, weight, bias), "
                             f"got {len(ref)} entries")
        rh, rw, rb = (tuple(ref) + (None,))[:3]
        _check_head(rh, rw, rb, ("ref[0]", "ref[1]", "ref[2]"))
        if tuple(rh.shape[:-1]) != tuple(hidden.shape[:-1]) or rw.shape[0] != weight.shape[0]:
            raise ValueError(f"ref= gives {tuple(rh.shape[:-1])} rows over a vocabulary of "
                             f"{rw.shape[0]}, but hidden= has {tuple(hidden.shape[:-1])} rows "
                             f"and weight= a vocabulary of {weight.shape[0]}")
        return (None,) + tuple(None if x is None else x.detach() for x in (rh, rw, rb))
    if not (isinstance(ref, torch.Tensor) and ref.is_floating_point()):
        raise TypeError(f"ref= must be the teacher's logits (a floating-point tensor) or a "
                        f"(hidden, weight[, bias]) tuple, got {type(ref).__name__}")
    expected = tuple(hidden.shape[:-1]) + (weight.shape[0],)
    if tuple(ref.shape) != expected:
        raise ValueError(f"ref= has shape {tuple(ref.shape)}; the teacher's logits have the "
                         f"student's, {expected} (hidden rows x V)")
    return ref.detach(), None, None, None


def _check_mask(mask, hidden):
    if mask is not None and tuple(mask.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"mask= has shape {tuple(mask.shape)} but hidden= has "
                         f"{tuple(hidden.shape[:-1])} rows (one entry per row)")


def _check_chunk_rows(chunk_rows):
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows= must be a positive int, got {chunk_rows!r}")


def linear_logits_loss(hidden, weight, ref, *, bias=None, divergence="reverse-kl",
                       temperature=1.0, lam=0.5, top_k=None, mask=None, chunk_rows=None,
                       backend=None, process_group=None):
    """(loss, value) of softmax((hidden @ weight.T + bias) / temperature) against the
    teacher's, as klgrad.torch.logits_loss of those logits, without the N x V logits ever
    existing: rows go chunk_rows at a time through the row kernels, whose logit gradients are
    accumulated into the gradients of hidden, weight and bias. hidden: N x H or B x T x H;
    weight: V x H (torch.nn.Linear's); ref: the teacher's logits (hidden's rows x V) or a
    (hidden, weight) or (hidden, weight, bias) tuple whose logits are made per chunk too;
    mask: one entry per row, nonzero = valid. chunk_rows: None picks
    default_chunk_rows(N, H, V). divergence, temperature, lam, top_k as logits_loss; backend
    is passed to klgrad.logits_divergence when given. loss is differentiable to hidden,
    weight and bias (a custom op, klgrad::linear_logits_loss); value is detached. Inputs in
    float64 compute in float64, all others in float32 (the logits are never rounded to 16
    bits). process_group= (a torch.distributed group, or True for the default one): weight,
    bias and the teacher's weight, bias or logits are this rank's contiguous slice of the
    vocabulary; loss and value are the full vocabulary's, the gradients to weight and bias
    this slice's, the gradient to hidden the whole (all-reduced over the group: do not
    all-reduce it again); eager, not the op. docs/logits.md, "The fused linear form"."""
    _check_head(hidden, weight, bias, ("hidden", "weight", "bias"))
    teacher = _teacher_args(ref, hidden, weight)
    mask = None if mask is None else torch.as_tensor(mask).detach()
    _check_mask(mask, hidden)
    if chunk_rows is None:
        rows = hidden.numel() // max(hidden.shape[-1], 1)
        chunk_rows = default_chunk_rows(rows, hidden.shape[-1], weight.shape[0])
    _check_chunk_rows(chunk_rows)
    if process_group is not None:
        if backend is not None:
            raise ValueError("backend= chooses the row kernels, which vocabulary shards do not "
                             "call; pass process_group= or backend=, not both")
        settings = dict(divergence=divergence, mask=mask, temperature=float(temperature),
                        lam=float(lam), top_k=top_k, chunk_rows=chunk_rows)
        return _ShardedLinear.apply(hidden, weight, bias, teacher, settings, process_group)
    loss, value, *_ = linear_logits_loss_op(hidden, weight, bias, *teacher, divergence, mask,
                                            float(temperature), float(lam), top_k, chunk_rows,
                                            backend)
    return loss, value
