"""The torch.library custom operators behind klgrad.torch: klgrad::kl_loss,
klgrad::kl_penalty and klgrad::logits_loss.

Each op's CPU kernel calls only the public functions klgrad.evaluate and
klgrad.logits_divergence on the tensors it is given; kl_loss and kl_penalty take the device
path (klgrad.device) for tensors on another device (one implementation, registered for
every device, where backend="auto" takes the device path and "kernel" refuses the tensor)
or where backend="device" asks for it on the CPU (how the tests run opcheck on it); a fake
(meta) kernel gives the output shapes and dtypes to torch.compile's tracer without reading data, and an autograd formula
gives d(loss)/d(input) = grad_loss * (the coefficient or gradient the forward kernel wrote),
so torch.compile(fullgraph=True) traces a training step through them with no graph break.

Schemas (docs/python.md, "Custom ops and torch.compile"):

    klgrad::kl_loss(Tensor logp, Tensor ref, str spec, Tensor? behavior, Tensor? mask,
                    Tensor? offsets, SymInt? tokens, SymInt? sequences,
                    str backend="auto") -> (Tensor loss, Tensor value, Tensor coef)
    klgrad::kl_penalty(Tensor logp, Tensor ref, str spec, Tensor? behavior, Tensor? mask,
                       Tensor? offsets, str backend="auto") -> Tensor
    klgrad::logits_loss(Tensor logits, Tensor ref_logits, str divergence, Tensor? mask,
                        float temperature, float lam, SymInt? top_k, str backend="auto")
        -> (Tensor loss, Tensor value, Tensor grad)

klgrad::logits_loss has a CUDA kernel of its own (torch.library.impl for "cuda"): the Triton
kernels of klgrad.triton_logits; its CPU kernel is the C++ kernel, or the Triton kernels
under TRITON_INTERPRET=1 with backend="triton".

The spec crosses as a string (a klgrad.Spec as its canonical str(spec)); each op parses it
once per distinct string (functools.lru_cache), the fake kernels too, so that a bad spec is
refused while tracing. Nothing flows into ref, behavior or ref_logits; value, coef and grad
are not differentiable outputs.
"""
import functools

import torch

import klgrad
from klgrad import device

__all__ = ["kl_loss_op", "kl_penalty_op", "logits_loss_op"]


@functools.lru_cache(maxsize=256)
def _parsed(spec):
    """The klgrad.Spec of a spec string, parsed once per distinct string (SpecError else)."""
    return klgrad.Spec(spec)


def _empty_like_rows(x, dtype=None):
    """A new contiguous tensor of x's shape (what the kernels return: fresh, row-major)."""
    return x.new_empty(x.shape, dtype=x.dtype if dtype is None else dtype)


def _define(name, schema, kernel, *, cuda=None, fake, backward, setup, namespace="klgrad"):
    """Defines the op namespace::name with torch.library's define / impl / register_fake /
    register_autograd, and returns it (an OpOverload). kernel serves every device, cuda (if
    given) CUDA tensors. Not torch.library.custom_op, whose wrapper about doubles the
    per-call time of a small call (bench/op_overhead.py); the registrations are the same."""
    qualname = f"{namespace}::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "default", kernel)
    if cuda is not None:
        torch.library.impl(qualname, "cuda", cuda)
    torch.library.register_fake(qualname, fake)
    torch.library.register_autograd(qualname, backward, setup_context=setup)
    return getattr(getattr(torch.ops, namespace), name).default


# ---- klgrad::kl_loss ----------------------------------------------------------------------

def _kl_loss(logp, ref, spec, behavior, mask, offsets, tokens, sequences, backend="auto"):
    """(loss, value, coef) of one evaluation: loss a 0-dim tensor of logp's dtype, value and
    coef per token (logp's shape and dtype). The C++ kernel (one klgrad.evaluate call), or
    the device path where backend= sends logp (checked with one transfer, or none where the
    counts are given: device.settled)."""
    if klgrad.uses_device(backend, logp):
        r = device.settled(_parsed(spec), logp, ref, behavior, mask, offsets, tokens, sequences)
        return r.loss.to(logp.dtype), r.value, r.coef
    r = klgrad.evaluate(_parsed(spec), logp, ref, behavior=behavior, mask=mask,
                        offsets=offsets, tokens=tokens, sequences=sequences, backend="kernel")
    return torch.scalar_tensor(r.loss, dtype=logp.dtype), r.value, r.coef


def _kl_loss_fake(logp, ref, spec, behavior, mask, offsets, tokens, sequences,
                  backend="auto"):
    _parsed(spec)
    return logp.new_empty(()), _empty_like_rows(logp), _empty_like_rows(logp)


def _loss_setup(ctx, inputs, output):
    """The setup of the ops returning (loss, value, gradient-like output): kl_loss's coef,
    logits_loss's grad. The first input is saved only for its version counter: a backward
    after it (or a tensor it is a view of) was changed in place is refused, as autograd
    refuses it for its own ops."""
    ctx.save_for_backward(inputs[0], output[2])
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # no zero tensors for the grads of value and coef


def _traced(t):
    """True while t is a tracing tensor (torch.compile, make_fx, opcheck's fake runs)."""
    return (torch.compiler.is_compiling() or type(t) is not torch.Tensor
            or torch._is_functional_tensor(t))


def _scaled(grad_loss, g):
    """grad_loss * g. In eager mode with a CPU grad_loss == 1 (the usual loss.backward()), g
    itself: without retain_graph autograd has released the saved g by the time it
    accumulates it, so the kernel's array becomes the gradient without a copy or a pass over
    it. On another device reading grad_loss would synchronise: the multiplication runs."""
    if grad_loss is None:
        return None
    if not _traced(grad_loss) and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
        return g
    return grad_loss * g


def _kl_loss_backward(ctx, grad_loss, grad_value, grad_coef):
    _, coef = ctx.saved_tensors
    # Everything but logp is data: nothing flows into ref or behavior (for is=differentiable
    # the weight's derivative is already in coef).
    return _scaled(grad_loss, coef), None, None, None, None, None, None, None, None


# One implementation for every device, CUDA named (the device path's registration): there
# backend="auto" takes the device path and "kernel" refuses the tensor.
KL_LOSS_SCHEMA = (
    "(Tensor logp, Tensor ref, str spec, Tensor? behavior, Tensor? mask, Tensor? offsets, "
    "SymInt? tokens, SymInt? sequences, str backend=\"auto\") -> (Tensor, Tensor, Tensor)")

kl_loss_op = _define("kl_loss", KL_LOSS_SCHEMA, _kl_loss, cuda=_kl_loss, fake=_kl_loss_fake,
                     backward=_kl_loss_backward, setup=_loss_setup)


# ---- klgrad::kl_penalty -------------------------------------------------------------------

def _kl_penalty(logp, ref, spec, behavior, mask, offsets, backend="auto"):
    """beta * value per token (logp's shape and dtype), not differentiable: the kernel's, or
    the device path's (no transfer: its checks are device assertions)."""
    parsed = _parsed(spec)
    if klgrad.uses_device(backend, logp):
        r = device.settled(parsed, logp, ref, behavior, mask, offsets, None, None, needs=False)
    else:
        r = klgrad.evaluate(parsed, logp, ref, behavior=behavior, mask=mask, offsets=offsets,
                            backend="kernel")
    return r.value.mul_(parsed.beta)  # value is a new tensor: scaled in place


def _kl_penalty_fake(logp, ref, spec, behavior, mask, offsets, backend="auto"):
    _parsed(spec)
    return _empty_like_rows(logp)


def _kl_penalty_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output)


def _kl_penalty_backward(ctx, grad):
    return None, None, None, None, None, None, None


kl_penalty_op = _define(
    "kl_penalty",
    "(Tensor logp, Tensor ref, str spec, Tensor? behavior, Tensor? mask, Tensor? offsets, "
    "str backend=\"auto\") -> Tensor",
    _kl_penalty, cuda=_kl_penalty, fake=_kl_penalty_fake, backward=_kl_penalty_backward,
    setup=_kl_penalty_setup)


# ---- klgrad::logits_loss ------------------------------------------------------------------

_SIXTEEN = (torch.bfloat16, torch.float16)


def _logits_loss(logits, ref_logits, divergence, mask, temperature, lam, top_k,
                 backend="auto"):
    """(loss, value, grad) of one klgrad.logits_divergence call: loss 0-dim and value per row
    in the kernel's dtype (float32 for 16-bit logits), grad in the logits' shape and dtype.
    backend: as logits_divergence's (on CPU tensors "auto" is the C++ kernel)."""
    r = klgrad.logits_divergence(logits, ref_logits, divergence=divergence, lam=lam,
                                 top_k=top_k, temperature=temperature, mask=mask,
                                 gradient=True, grad_dtype=logits.dtype, backend=backend)
    loss = torch.scalar_tensor(r.loss, dtype=r.value.dtype, device=logits.device)
    return loss, r.value, r.grad


def _logits_loss_cuda(logits, ref_logits, divergence, mask, temperature, lam, top_k,
                      backend="auto"):
    """The CUDA kernel: the Triton kernels (klgrad.triton_logits; "kernel" is refused, the
    C++ kernel computes on the CPU)."""
    if backend == "kernel":
        raise TypeError(f"backend='kernel' computes on the CPU but logits= is on "
                        f"{logits.device}; pass backend='auto' or 'triton'")
    return _logits_loss(logits, ref_logits, divergence, mask, temperature, lam, top_k,
                        "triton")


def _logits_loss_fake(logits, ref_logits, divergence, mask, temperature, lam, top_k,
                      backend="auto"):
    kernel = torch.float32 if logits.dtype in _SIXTEEN else logits.dtype
    value = logits.new_empty(logits.shape[:-1], dtype=kernel)
    return logits.new_empty((), dtype=kernel), value, _empty_like_rows(logits)


def _logits_loss_backward(ctx, grad_loss, grad_value, grad_grad):
    _, grad = ctx.saved_tensors
    # 16-bit logits: grad is already the logits' dtype (the float32 kernel gradient rounded
    # once); a grad_loss other than 1 scales it in that dtype.
    return _scaled(grad_loss, grad), None, None, None, None, None, None, None


logits_loss_op = _define(
    "logits_loss",
    "(Tensor logits, Tensor ref_logits, str divergence, Tensor? mask, float temperature, "
    "float lam, SymInt? top_k, str backend=\"auto\") -> (Tensor, Tensor, Tensor)",
    _logits_loss, cuda=_logits_loss_cuda, fake=_logits_loss_fake,
    backward=_logits_loss_backward, setup=_loss_setup)
