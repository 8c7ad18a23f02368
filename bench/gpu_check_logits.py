#!/usr/bin/env python3
"""The GPU check of the full-vocabulary Triton row kernels (klgrad.triton_logits; issue 26,
item 6): accuracy against a float64 reference, and forward + backward time and peak memory
against the composites trainers write.

On a GPU: N = 4,096 rows at V = 128,256 and 151,936 in float32, bfloat16 and float16.
  * accuracy: every divergence and top-k form (k = 64, temperature 0.7, lam 0.5) by
    klgrad.logits_divergence(backend="triton") on all N rows; the reference is the C++
    kernel in float64 on 8 sampled rows (the same logits, widened exactly); the table gives
    the max relative error of the value and of the gradient (per row, on the row's own
    scale: klgrad.testing.row_relative_error);
  * time and memory: the loss and its gradient (forward + backward) of reverse-kl and
    jensen-shannon by klgrad.torch.logits_loss (autograd), by logits_divergence with
    grad_in_place=True (the gradient over the logits), by PyTorch eager (the log_softmax +
    kl_div composite, in float32 as trainers upcast), by torch.compile of that composite,
    and by liger-kernel's LigerJSD (on the composite's log-probabilities) and
    LigerFusedLinearJSD (hidden 4,096, the matmuls included: not the same work) where
    liger-kernel is installed (the table says so where not). Times are the median of 3
    runs (1 with --cpu) after a warm-up (CUDA events); peak memory is the most allocated during the call
    above what was allocated before it (inputs excluded).

With --cpu (run(cpu=True)): 4 rows at V = 1,000 on the CPU, float32 and float16, on the
Triton kernels under TRITON_INTERPRET=1 (else on the C++ kernel, said so), against PyTorch
eager only; seconds, for CI (python/tests_triton/test_gpu_check_logits.py). Its times
measure the interpreter, nothing about a GPU.

bench/gpu_check.py imports this module and calls run(cpu); standalone:
    python bench/gpu_check_logits.py [--cpu]
"""
import argparse
import functools
import os
import statistics
import time

import torch
import torch.nn.functional as F

import klgrad
import klgrad.torch as kt
from klgrad.testing import relative_error, row_relative_error

FORMS = [("reverse-kl", None), ("forward-kl", None), ("jensen-shannon", None),
         ("forward-kl-top-k", 64), ("reverse-kl-top-k", 64), ("forward-kl-top-k-tail", 64),
         ("reverse-kl-top-k-tail", 64)]
TEMPERATURE, LAM = 0.7, 0.5
GPU = dict(rows=4096, vocabs=(128256, 151936),
           dtypes=(torch.float32, torch.bfloat16, torch.float16), sampled=8, top_k=64)
CPU = dict(rows=4, vocabs=(1000,), dtypes=(torch.float32, torch.float16), sampled=2, top_k=8,
           repeats=1)
GPU["repeats"] = 3


def make_logits(rows, vocab, dtype, device, seed=0):
    """Policy N(0, 2), reference = policy + N(0, 1), rounded to dtype."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g, device=device) * 2
    zr = z + torch.randn(rows, vocab, generator=g, device=device)
    return z.to(dtype), zr.to(dtype)


def backend_of(device):
    """The backend the check runs klgrad on, and why."""
    if device == "cuda":
        return "triton", "Triton kernels"
    if os.environ.get("TRITON_INTERPRET") == "1":
        try:
            import triton  # noqa: F401
            return "triton", "Triton kernels under TRITON_INTERPRET=1"
        except ImportError:
            pass
    return "kernel", "C++ kernel (no TRITON_INTERPRET=1 or no triton)"


def accuracy_rows(cfg, device, backend):
    """(V, dtype, divergence, value error, gradient error) per case."""
    for vocab in cfg["vocabs"]:
        for dtype in cfg["dtypes"]:
            z, zr = make_logits(cfg["rows"], vocab, dtype, device)
            picked = torch.linspace(0, cfg["rows"] - 1, cfg["sampled"]).long().to(device)
            for divergence, top_k in FORMS:
                k = None if top_k is None else min(top_k, cfg["top_k"])
                kw = dict(divergence=divergence, top_k=k, temperature=TEMPERATURE, lam=LAM)
                r = klgrad.logits_divergence(z, zr, backend=backend, **kw)
                ref = klgrad.logits_divergence(z[picked].double().cpu(),
                                               zr[picked].double().cpu(),
                                               backend="kernel", **kw)
                # Both gradients are of a token-mean: scale each to one row's.
                grad = r.grad[picked].double().cpu() * r.rows
                yield (vocab, dtype, divergence,
                       relative_error(r.value[picked].cpu(), ref.value),
                       row_relative_error(grad, ref.grad * ref.rows))
                del r, ref, grad


def eager_composite(divergence):
    """The loss as trainers write it: float32 log_softmax of both rows, then kl_div (TRL's
    generalized_jsd_loss for jensen-shannon), the mean over rows."""
    def loss(z, zr):
        lp = F.log_softmax(z.float() / TEMPERATURE, dim=-1)
        lr = F.log_softmax(zr.float() / TEMPERATURE, dim=-1)
        if divergence == "reverse-kl":
            per_row = F.kl_div(lr, lp, reduction="none", log_target=True).sum(-1)
        else:
            lam = torch.tensor(LAM)
            lm = torch.logsumexp(torch.stack([lp + torch.log(1 - lam), lr + torch.log(lam)]),
                                 dim=0)
            per_row = (LAM * F.kl_div(lm, lr, reduction="none", log_target=True)
                       + (1 - LAM) * F.kl_div(lm, lp, reduction="none", log_target=True)
                       ).sum(-1)
        return per_row.mean()
    return loss


@functools.lru_cache(maxsize=None)
def compiled_composite(divergence):
    """torch.compile of the eager composite, one per divergence for the whole run (dynamic
    shapes: a new V does not recompile it, a new dtype does)."""
    return torch.compile(eager_composite(divergence), dynamic=True)


def liger_methods(divergence, hidden_size=4096):
    """liger-kernel's methods for the divergence, or a note saying why there are none."""
    if divergence != "jensen-shannon":
        return {}, None
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD, LigerJSD
    except ImportError:
        return {}, "liger-kernel is not installed: its JSD and fused linear JSD not measured"
    jsd = LigerJSD(beta=LAM)

    def liger_jsd(z, zr):  # its inputs: log-probabilities (student, teacher)
        lp = F.log_softmax(z.float() / TEMPERATURE, dim=-1)
        lr = F.log_softmax(zr.float() / TEMPERATURE, dim=-1)
        return jsd(lp, lr)

    fused = LigerFusedLinearJSD(jsd_beta=LAM, temperature=TEMPERATURE)

    def liger_fused(z, zr):  # hidden states and weights of that V (the matmuls included)
        n, v = z.shape
        g = torch.Generator(device=z.device).manual_seed(1)
        h = torch.randn(n, hidden_size, generator=g, device=z.device, dtype=z.dtype)
        w = torch.randn(v, hidden_size, generator=g, device=z.device, dtype=z.dtype) * 0.02
        return fused(h.requires_grad_(True), w, h.detach(), w)

    return {"liger JSD": liger_jsd, "liger fused linear JSD (+ matmuls)": liger_fused}, None


def methods_for(divergence, backend, device):
    """name -> fn(z, zr) running forward and backward; and notes on what is not measured."""
    def klgrad_loss(z, zr):
        return kt.logits_loss(z, zr, divergence=divergence, temperature=TEMPERATURE,
                              lam=LAM, backend=backend)[0]

    def klgrad_in_place(z, zr):
        klgrad.logits_divergence(z.detach(), zr, divergence=divergence,
                                 temperature=TEMPERATURE, lam=LAM, backend=backend,
                                 grad_in_place=True)

    eager = eager_composite(divergence)
    methods = {"klgrad logits_loss": klgrad_loss, "klgrad grad_in_place": klgrad_in_place,
               "PyTorch eager": eager}
    notes = []
    if device == "cuda":
        methods["torch.compile"] = compiled_composite(divergence)
        liger, note = liger_methods(divergence)
        methods.update(liger)
        notes.append(note)
    else:
        notes.append("torch.compile and liger-kernel: GPU only (skipped with --cpu)")
    return methods, [n for n in notes if n]


def fresh(z0, name):
    """The policy logits a run starts from (made before the clock starts)."""
    return z0.clone().requires_grad_(name != "klgrad grad_in_place")


def _step(loss_of, zr):
    """One forward + backward from logits z."""
    def step(z):
        out = loss_of(z, zr)
        if out is not None:
            out.backward()
    return step


class Clock:
    """Wall time of a call (CUDA events on the GPU) and its peak extra memory."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def measure(self, fn, z):
        """(ms, peak extra MiB or None on the CPU) of fn(z)."""
        if not self.cuda:
            t0 = time.perf_counter()
            fn(z)
            return (time.perf_counter() - t0) * 1e3, None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(z)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), (torch.cuda.max_memory_allocated() - before) / 2**20


def timing_rows(cfg, device, backend, repeats):
    """(V, dtype, divergence, method, ms, peak MiB or None, note) per case."""
    clock = Clock(device)
    for vocab in cfg["vocabs"]:
        for dtype in cfg["dtypes"]:
            z0, zr = make_logits(cfg["rows"], vocab, dtype, device)
            for divergence in ("reverse-kl", "jensen-shannon"):
                methods, notes = methods_for(divergence, backend, device)
                for note in notes:
                    yield vocab, dtype, divergence, "-", None, None, note
                for name, loss_of in methods.items():
                    try:
                        runs = [clock.measure(call, fresh(z0, name)) for call in
                                [_step(loss_of, zr)] * (repeats + 1)][1:]  # warm-up first
                    except Exception as e:  # a method that cannot run says why, in the table
                        yield vocab, dtype, divergence, name, None, None, f"failed: {e}"
                        continue
                    ms = statistics.median(r[0] for r in runs)
                    peak = None if runs[0][1] is None else max(r[1] for r in runs)
                    yield vocab, dtype, divergence, name, ms, peak, ""


def _name(dtype):
    return str(dtype).replace("torch.", "")


def run(cpu: bool) -> None:
    """Prints the accuracy table and the time / memory table (module docstring)."""
    device = "cpu" if cpu else "cuda"
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the CPU check")
    cfg = CPU if cpu else GPU
    backend, what = backend_of(device)
    print(f"## klgrad full-vocabulary kernels: {what}, {cfg['rows']} rows, "
          f"temperature {TEMPERATURE}, lam {LAM}, top-k k = {cfg['top_k']}")
    print(f"\nAccuracy against the C++ kernel in float64 on {cfg['sampled']} sampled rows "
          f"(max relative error)\n")
    print("| V | dtype | divergence | value | gradient (row scale) |")
    print("|---|---|---|---|---|")
    for vocab, dtype, divergence, ev, eg in accuracy_rows(cfg, device, backend):
        print(f"| {vocab} | {_name(dtype)} | {divergence} | {ev:.2e} | {eg:.2e} |")
    print(f"\nForward + backward of the mean loss: time (median of {cfg['repeats']}) and peak "
          f"extra memory\n")
    print("| V | dtype | divergence | method | ms | peak MiB | |")
    print("|---|---|---|---|---|---|---|")
    rows = timing_rows(cfg, device, backend, cfg["repeats"])
    for vocab, dtype, divergence, name, ms, peak, note in rows:
        ms_text = "" if ms is None else f"{ms:.2f}"
        peak_text = "" if peak is None else f"{peak:.0f}"
        print(f"| {vocab} | {_name(dtype)} | {divergence} | {name} | {ms_text} | "
              f"{peak_text} | {note} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="tiny sizes on the CPU (seconds; for CI)")
    run(parser.parse_args().cpu)


if __name__ == "__main__":
    main()
