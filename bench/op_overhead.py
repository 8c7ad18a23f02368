"""Per-call overhead of klgrad's torch.library ops against the direct Python call, on a
1 x 1 float32 batch (the kernel's own work is nil, so the time is the call's overhead).

    PYTHONPATH=python python bench/op_overhead.py [--repeats N] [--cpp]

op_overhead_us(repeats) -> dict of microseconds per call (the least of several blocks of
`repeats` calls, the blocks of each path interleaved):

    evaluate            klgrad.evaluate(spec, logp, ref)            the direct call
    kl_loss_op          torch.ops.klgrad.kl_loss (no gradient)      the op path
    kl_loss             klgrad.torch.kl_loss (no gradient)          op + the Python wrapper
    kl_loss_autograd    klgrad.torch.kl_loss, logp requires grad    + the autograd node
    function_autograd   the same through a torch.autograd.Function  option (c) below
                        calling klgrad.evaluate, logp requires grad
    kl_loss_step        klgrad.torch.kl_loss forward + backward     a training step's share
    function_step       the autograd.Function forward + backward
    registered_op       an op with kl_loss's schema and registrations   torch's own cost of
    registered_autograd (the same _ops._define) whose kernel only makes a Python-registered
    registered_step     its outputs: no gradient, with grad, a step     op
    logits_divergence   klgrad.logits_divergence (1 x 2 logits)     the direct call
    logits_loss_op      torch.ops.klgrad.logits_loss (no gradient)  the op path
    logits_loss         klgrad.torch.logits_loss (no gradient)

and the differences kl_loss_op - evaluate, kl_loss - evaluate, logits_loss_op -
logits_divergence, and kl_loss_op - registered_op, kl_loss_autograd - registered_autograd,
kl_loss_step - registered_step (what klgrad's kernel adds to torch's cost of the op)
(keys ending in _minus_...). issue 23 asks that the op path stay within 5 us of the direct
call.

function_autograd and function_step measure option (c) of the decision that target left
open (docs/python.md, "Overhead"): in eager mode, call the binding under a
torch.autograd.Function (_EagerKL below: the op's own kernel and backward formula, written
for this measurement only) instead of the op, whose dispatcher and Python autograd kernel
are what the op costs.

With --cpp (cpp=True) it also measures option (a): bench/op_overhead_cpp/kl_loss_op.cpp,
an operator klgrad_cpp::kl_loss registered from C++ with a C++ autograd kernel (a
prototype, float32, no mask), compiled here by torch.utils.cpp_extension against this
torch (about 35 s):

    cpp_op              torch.ops.klgrad_cpp.kl_loss (no gradient)
    cpp_op_autograd     the same, logp requires grad
    cpp_op_step         its forward + backward

and cpp_op_minus_evaluate, cpp_op_autograd_minus_evaluate.

With --cold, cold_us() times every path again with cold caches, as between a trainer's
batches: a hot loop keeps the interpreter's and the dispatcher's code and data in cache,
which a batch's bytes evict.
"""
import argparse
import functools
import os
import random
import statistics
import time

import torch

import klgrad
import klgrad.torch as kt
from klgrad import _ops

SPEC = "k3-as-loss,beta=0.04"


def _block_us(fn, repeats):
    start = time.perf_counter_ns()
    for _ in range(repeats):
        fn()
    return (time.perf_counter_ns() - start) / repeats / 1e3


class _EagerKL(torch.autograd.Function):
    """kl_loss as option (c) would run it in eager mode: the op's own CPU kernel
    (_ops._kl_loss) and backward formula (_ops._scaled) under an autograd.Function, without
    the dispatcher."""

    @staticmethod
    def forward(ctx, logp, ref, spec):
        loss, value, coef = _ops._kl_loss(logp.detach(), ref, spec, None, None, None, None,
                                          None)
        ctx.save_for_backward(coef)
        ctx.mark_non_differentiable(value)
        return loss, value

    @staticmethod
    def backward(ctx, grad_loss, grad_value):
        (coef,) = ctx.saved_tensors
        return _ops._scaled(grad_loss, coef), None, None


def _outputs_only(logp, ref, spec, behavior, mask, offsets, tokens, sequences,
                  backend="auto"):
    """The registered floor's kernel: klgrad::kl_loss's outputs (loss, value, coef), made as
    _ops._kl_loss makes them, and nothing computed."""
    return (torch.scalar_tensor(0.0, dtype=logp.dtype), torch.empty_like(logp),
            torch.empty_like(logp))


@functools.lru_cache(maxsize=None)  # defined once a process
def _registered_floor():
    """klgrad_bench::kl_loss_floor: klgrad::kl_loss's schema, fake, autograd formula and
    setup registered by the same _ops._define, its kernel _outputs_only."""
    return _ops._define("kl_loss_floor", _ops.KL_LOSS_SCHEMA, _outputs_only,
                        fake=_ops._kl_loss_fake, backward=_ops._kl_loss_backward,
                        setup=_ops._loss_setup, namespace="klgrad_bench")


def _step(forward):
    """forward() -> (loss, value), then loss.backward(): a training step's share."""
    def run():
        loss, _ = forward()
        loss.backward()
    return run


def _cpp_op():
    """torch.ops.klgrad_cpp.kl_loss, compiled from bench/op_overhead_cpp/kl_loss_op.cpp on
    first use."""
    from torch.utils import cpp_extension
    here = os.path.dirname(os.path.abspath(__file__))
    cpp_extension.load(name="klgrad_op_overhead_cpp",
                       sources=[os.path.join(here, "op_overhead_cpp", "kl_loss_op.cpp")],
                       extra_include_paths=[os.path.join(here, "..", "include"),
                                            "/usr/include/eigen3"],
                       extra_cflags=["-O3", "-march=native", "-DNDEBUG"],
                       is_python_module=False)
    return torch.ops.klgrad_cpp.kl_loss.default


def _paths(cpp):
    """{name: a call of that path} (see the module docstring); with cpp, option (a)'s
    C++-registered prototype too."""
    spec = klgrad.Spec(SPEC)
    logp = torch.full((1, 1), -0.5)
    ref = torch.full((1, 1), -0.7)
    logp_grad = logp.clone().requires_grad_(True)
    z = torch.tensor([[0.3, -0.2]])
    zr = torch.tensor([[0.1, 0.4]])
    kl_op = torch.ops.klgrad.kl_loss.default
    logits_op = torch.ops.klgrad.logits_loss.default
    paths = {
        "evaluate": lambda: klgrad.evaluate(spec, logp, ref),
        "kl_loss_op": lambda: kl_op(logp, ref, SPEC, None, None, None, None, None),
        "kl_loss": lambda: kt.kl_loss(SPEC, logp, ref),
        "kl_loss_autograd": lambda: kt.kl_loss(SPEC, logp_grad, ref),
        "function_autograd": lambda: _EagerKL.apply(logp_grad, ref, SPEC),
        "kl_loss_step": _step(lambda: kt.kl_loss(SPEC, logp_grad, ref)),
        "function_step": _step(lambda: _EagerKL.apply(logp_grad, ref, SPEC)),
        "logits_divergence": lambda: klgrad.logits_divergence(z, zr),
        "logits_loss_op": lambda: logits_op(z, zr, "reverse-kl", None, 1.0, 0.5, None),
        "logits_loss": lambda: kt.logits_loss(z, zr),
    }
    floor_op = _registered_floor()
    paths["registered_op"] = lambda: floor_op(logp, ref, SPEC, None, None, None, None, None)
    paths["registered_autograd"] = lambda: floor_op(logp_grad, ref, SPEC, None, None, None,
                                                    None, None)
    paths["registered_step"] = _step(lambda: floor_op(logp_grad, ref, SPEC, None, None, None,
                                                      None, None)[:2])
    if cpp:
        cpp_op = _cpp_op()
        paths["cpp_op"] = lambda: cpp_op(logp, ref, SPEC)
        paths["cpp_op_autograd"] = lambda: cpp_op(logp_grad, ref, SPEC)
        paths["cpp_op_step"] = _step(lambda: cpp_op(logp_grad, ref, SPEC)[:2])
    return paths


def op_overhead_us(repeats=20000, blocks=7, cpp=False):
    """Microseconds per call of each path (see the module docstring), and the differences;
    with cpp, option (a)'s C++-registered prototype too."""
    paths = _paths(cpp)
    for fn in paths.values():  # warm up: caches, first dispatch
        for _ in range(max(1, repeats // 10)):
            fn()
    best = {name: float("inf") for name in paths}
    for _ in range(blocks):
        for name, fn in paths.items():
            best[name] = min(best[name], _block_us(fn, repeats))
    best["kl_loss_op_minus_evaluate"] = best["kl_loss_op"] - best["evaluate"]
    best["kl_loss_minus_evaluate"] = best["kl_loss"] - best["evaluate"]
    best["kl_loss_autograd_minus_evaluate"] = best["kl_loss_autograd"] - best["evaluate"]
    best["function_autograd_minus_evaluate"] = best["function_autograd"] - best["evaluate"]
    best["logits_loss_op_minus_logits_divergence"] = (best["logits_loss_op"]
                                                      - best["logits_divergence"])
    best["logits_loss_minus_logits_divergence"] = (best["logits_loss"]
                                                   - best["logits_divergence"])
    best["kl_loss_op_minus_registered_op"] = best["kl_loss_op"] - best["registered_op"]
    best["kl_loss_autograd_minus_registered_autograd"] = (best["kl_loss_autograd"]
                                                          - best["registered_autograd"])
    best["kl_loss_step_minus_registered_step"] = (best["kl_loss_step"]
                                                  - best["registered_step"])
    if cpp:
        best["cpp_op_minus_evaluate"] = best["cpp_op"] - best["evaluate"]
        best["cpp_op_autograd_minus_evaluate"] = best["cpp_op_autograd"] - best["evaluate"]
    return best


def cold_us(calls=2000, cpp=False, seed=0):
    """Median microseconds per call of each path when the caches are cold, as between a
    trainer's batches: before every call (untimed) a pass streams 8 MB through them, and the
    paths' order is shuffled each round."""
    paths = _paths(cpp)
    big = torch.rand(1 << 20)
    out = torch.empty_like(big)
    times = {name: [] for name in paths}
    shuffler = random.Random(seed)
    for _ in range(calls):
        names = list(paths)
        shuffler.shuffle(names)
        for name in names:
            torch.mul(big, 1.0001, out=out)
            start = time.perf_counter_ns()
            paths[name]()
            times[name].append((time.perf_counter_ns() - start) / 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20000)
    parser.add_argument("--cpp", action="store_true",
                        help="also build and time option (a), "
                             "bench/op_overhead_cpp/kl_loss_op.cpp")
    parser.add_argument("--cold", action="store_true",
                        help="also time each path with cold caches (cold_us)")
    args = parser.parse_args()
    us = op_overhead_us(args.repeats, cpp=args.cpp)
    print(f"per-call time, 1 x 1 float32 batch, torch {torch.__version__} "
          f"(least of 7 blocks of {args.repeats} calls)")
    for name, value in us.items():
        print(f"  {name:42s} {value:8.2f} us")
    if args.cold:
        print("per-call time with cold caches (8 MB streamed before each call; median of "
              "2,000 calls)")
        for name, value in cold_us(cpp=args.cpp).items():
            print(f"  {name:42s} {value:8.2f} us")


if __name__ == "__main__":
    main()
