"""The Python package's throughput, side by side in one run (docs/performance.md):

1. klgrad.evaluate from numpy, 64 x 2048 float32, k3-as-loss with a mask, against the C++
   kernel's own time on the same arrays (klgrad._klgrad.kernel_seconds: the same compiled
   kernel called from C++), and the fixed overhead of a call (a 1 x 1 batch); then
   bench/op_overhead.py's op_overhead_us() (the torch.library op path's overhead);
2. klgrad.torch.kl_loss forward + backward on 2^20 float32 tokens against PyTorch eager
   autograd of verl's low_var_kl (k3 with the log-ratio clamped to [-20, 20] and the value
   to [-10, 10], masked mean) and against the same formula under torch.compile, and the
   floor: the bytes kl_loss must move at the rate of a triad (c = a + b) measured in the
   same rounds; beside them klgrad.evaluate into given value and coef tensors (the kernel
   without the op path: no new outputs, no dispatcher, no autograd), so that the op path's
   share is a ratio of the same rounds (with --op-steps, that path step by step: new
   outputs, the op without autograd, its forward with autograd); 2b. kl_loss, the k3
   kernel (given and new outputs), the k1 kernel and the triad each called 20 times back to
   back, as a loop calls them (the floor at the triad's rate with nothing between its
   calls), with the page faults per call;
3. klgrad.torch.logits_loss (reverse KL) forward + backward at V = 151,936 against the
   eager and the compiled log_softmax + kl_div composite, and the floor: the exponentials
   of both rows (2 x rows x V) at the rate of a fused exp-and-sum measured in the same
   rounds (or the bytes at the triad's rate, whichever is slower); then the C++ bound of
   the same exponentials, klgrad.bench's exp-sum floor (Eigen's packet exp), in its own
   rounds: the C++ kernel's paired ratio to it, and logits_loss's ratio of medians.

Timing: every candidate of a part, its floor included, runs once per round, in an order
shuffled from round to round (a fixed seed), for --rounds rounds after a warm-up
(torch.compile's compilation happens in the warm-up and is excluded). A table row gives
the median and the least of its rounds; a ratio is the median over rounds of the ratio of
the two times measured in the same round (so the machine's drift cancels), with its
quartiles.
    PYTHONPATH=python python bench/python_bench.py
"""
import argparse
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch

import klgrad
import klgrad.torch as kt
from klgrad._bench import _clock, _interleaved


def least_seconds(fn, repeats):
    """The least wall time of `repeats` calls after a warm-up (as kernel_seconds reports)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(candidates, rounds, warmup=2):
    """{name: [seconds per round]}: each candidate (name -> callable) once per round, the
    order shuffled every round, after `warmup` untimed calls of each; wall-clock
    times. The rounds of klgrad.bench (klgrad._bench._interleaved), a fixed number of them."""
    return _interleaved(candidates, 0.0, _clock(torch.device("cpu")), min_rounds=rounds,
                        warmup=warmup)


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def paired(numerator, denominator):
    """Median and quartiles of numerator[r] / denominator[r] over the rounds r."""
    return quartiles([a / b for a, b in zip(numerator, denominator)])


def row(name, times, items=None, note=""):
    med, least = statistics.median(times), min(times)
    rate = f"{items / med / 1e6:9.1f} M/s" if items else " " * 13
    print(f"   {name:60s} {med * 1e3:9.3f} ms {least * 1e3:9.3f} ms {rate}  {note}")


def ratio_line(text, q):
    lo, med, hi = q
    print(f"   {text:60s} {med:6.2f}  [{lo:.2f}, {hi:.2f}]")


def header(title):
    print(title)
    print(f"   {'':60s} {'median':>12s} {'least':>12s} {'rate (median)':>13s}")


def evaluate_vs_kernel(repeats):
    rng = np.random.default_rng(0)
    lp = rng.normal(-2, 0.5, (64, 2048)).astype(np.float32)
    lr = (lp + rng.normal(0, 0.1, lp.shape)).astype(np.float32)
    mask = rng.random(lp.shape) < 0.9
    spec = klgrad.Spec("k3-as-loss")
    value, coef = np.empty_like(lp), np.empty_like(lp)
    kernel = klgrad._klgrad.kernel_seconds(spec, lp, lr, mask, value, coef, repeats)
    python = least_seconds(lambda: klgrad.evaluate(spec, lp, lr, mask=mask, value=value,
                                                    coef=coef), repeats)
    fresh = least_seconds(lambda: klgrad.evaluate(spec, lp, lr, mask=mask), repeats)
    one = np.zeros((1, 1), np.float32)
    overhead = least_seconds(lambda: klgrad.evaluate(spec, one, one), repeats * 10)
    print("1. evaluate, 64 x 2048 float32, k3-as-loss, bool mask (least of repeats)")
    for name, seconds in (("C++ kernel (kernel_seconds)", kernel),
                          ("klgrad.evaluate(numpy, value=, coef=)", python),
                          ("klgrad.evaluate(numpy), new outputs", fresh),
                          ("klgrad.evaluate on a 1 x 1 batch (fixed call overhead)", overhead)):
        print(f"   {name:60s} {seconds * 1e6:9.1f} us")
    print(f"   evaluate / kernel = {python / kernel:.2f} (outputs given), "
          f"{fresh / kernel:.2f} (new outputs)")


def op_overhead(repeats):
    """bench/op_overhead.py's op_overhead_us(repeats): the torch.library ops' per-call
    overhead (issue 23 item 3), beside torch's own cost of an op registered alike."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from op_overhead import op_overhead_us
    print("1b. per-call overhead of the op path (bench/op_overhead.py)")
    for name, us in op_overhead_us(repeats).items():
        print(f"   {name:60s} {us:9.2f} us" if isinstance(us, (int, float))
              else f"   {name:60s} {us}")


def triad(n=1 << 22):
    """c = a + b over 3 x 16 MB float32 (torch.add on the set number of threads): moves
    12 n bytes, the rate a streaming kernel can reach."""
    a, b, c = (torch.rand(n) for _ in range(3))
    return (lambda: torch.add(a, b, out=c)), 12 * n


def verl_low_var_kl(lp, lr):
    """verl's low_var_kl (written from its definition): k3 of the log-ratio x = lr - lp
    clamped to [-20, 20], exp(x) - x - 1, the value clamped to [-10, 10]."""
    x = torch.clamp(lr - lp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(x) - x - 1.0, min=-10.0, max=10.0)


def masked_mean_low_var_kl(lp, lr, maskf):
    return (verl_low_var_kl(lp, lr) * maskf).sum() / maskf.sum()


# --op-steps: the op path in steps, each timed in the same rounds as the kernel alone.
OP_STEPS = ("k3-as-loss: evaluate, new outputs", "k3-as-loss: kl_loss op, no autograd",
            "k3-as-loss: kl_loss forward only")


def kl_loss_vs_torch(rounds, op_steps=False, rows=256):
    """Part 2 on rows x 4096 tokens (256: 2^20, the issue's size; more rows show how much of
    the distance to the floor is a fixed cost per call)."""
    g = torch.Generator().manual_seed(0)
    shape = (rows, 4096)
    lp0 = -torch.rand(shape, generator=g) * 3
    lr = lp0 + 0.1 * torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < 0.9
    maskf = mask.float()
    lp = lp0.clone().requires_grad_(True)
    compiled = torch.compile(masked_mean_low_var_kl)
    tri, tri_bytes = triad()

    def composite(fn):
        def run():
            lp.grad = None
            fn(lp, lr, maskf).backward()
        return run

    def klgrad_loss(spec):
        spec = klgrad.Spec(spec)

        def run():
            lp.grad = None
            loss, _ = kt.kl_loss(spec, lp, lr, mask=mask)
            loss.backward()
        return run

    value, coef = torch.empty_like(lp0), torch.empty_like(lp0)

    def kernel_only(spec):
        """The same kernel call without the op path: outputs given, no autograd."""
        spec = klgrad.Spec(spec)
        return lambda: klgrad.evaluate(spec, lp.detach(), lr, mask=mask, value=value,
                                       coef=coef)

    def steps(spec):
        """kernel alone -> new outputs -> the op without autograd -> its forward with autograd
        (the graph dropped); kl_loss adds the backward."""
        spec = klgrad.Spec(spec)
        return dict(zip(OP_STEPS, (lambda: klgrad.evaluate(spec, lp.detach(), lr, mask=mask),
                                   lambda: kt.kl_loss(spec, lp.detach(), lr, mask=mask),
                                   lambda: kt.kl_loss(spec, lp, lr, mask=mask))))

    # Check once that the three compute the same loss and gradient (float32 tolerances).
    ref_grad = None
    for fn in (composite(masked_mean_low_var_kl), composite(compiled),
               klgrad_loss("k3-as-loss,preset=verl")):
        fn()
        if ref_grad is None:
            ref_grad = lp.grad.clone()
        else:
            torch.testing.assert_close(lp.grad, ref_grad, rtol=1e-4, atol=1e-10)

    start = time.perf_counter()
    composite(compiled)()
    warm = time.perf_counter() - start
    times = interleaved({
        **(steps("k3-as-loss") if op_steps else {}),
        "eager": composite(masked_mean_low_var_kl),
        "compiled": composite(compiled),
        "verl": klgrad_loss("k3-as-loss,preset=verl"),
        "plain": klgrad_loss("k3-as-loss"),
        "verl kernel": kernel_only("k3-as-loss,preset=verl"),
        "plain kernel": kernel_only("k3-as-loss"),
        "triad": tri,
        # What returning two new tensors costs with nothing computed: the op path's outputs
        # are new each call, the floor's triad writes into one it reuses.
        "two new": lambda: (torch.add(lp0, lr), torch.sub(lp0, lr)),
    }, rounds)
    n = lp.numel()
    floor = kl_floor(times["triad"], tri_bytes, n)
    print(f"2. kl_loss forward + backward, {n:,} tokens float32 ({rows} x 4096), bool mask; "
          f"{rounds} rounds (compiled warm: one more call took {warm * 1e3:.1f} ms)")
    header("")
    row("PyTorch eager autograd of verl low_var_kl (masked mean)", times["eager"], n)
    row("the same formula under torch.compile (fwd + bwd graphs)", times["compiled"], n)
    row("klgrad.torch.kl_loss('k3-as-loss,preset=verl')", times["verl"], n)
    row("klgrad.torch.kl_loss('k3-as-loss')", times["plain"], n)
    row("klgrad.evaluate(verl, value=, coef=): no op path", times["verl kernel"], n)
    row("klgrad.evaluate(k3-as-loss, value=, coef=): no op path", times["plain kernel"], n)
    kl_floor_row(floor, times["triad"], tri_bytes, n)
    row("(reference: logp + ref, logp - ref into two new tensors)", times["two new"], n)
    print("   ratios, median over rounds [quartiles]:")
    ratio_line("kl_loss(verl) of its floor (floor time / kl_loss time)",
               paired(floor, times["verl"]))
    ratio_line("kl_loss(plain) of its floor", paired(floor, times["plain"]))
    ratio_line("evaluate(verl, value=, coef=) of the floor",
               paired(floor, times["verl kernel"]))
    ratio_line("evaluate(plain, value=, coef=) of the floor",
               paired(floor, times["plain kernel"]))
    ratio_line("kl_loss(verl) / evaluate(verl, value=, coef=)  (op path)",
               paired(times["verl"], times["verl kernel"]))
    ratio_line("kl_loss(plain) / evaluate(plain, value=, coef=)",
               paired(times["plain"], times["plain kernel"]))
    ratio_line("kl_loss(plain) / the two new tensors (reference)",
               paired(times["plain"], times["two new"]))
    if op_steps:
        for name in OP_STEPS:
            ratio_line(f"{name} / the kernel alone",
                       paired(times[name], times["plain kernel"]))
        ratio_line("kl_loss(plain) / its forward only  (the backward)",
                   paired(times["plain"], times[OP_STEPS[-1]]))
    ratio_line("eager / kl_loss(verl)  (speed-up over eager)", paired(times["eager"],
                                                                       times["verl"]))
    ratio_line("compiled / kl_loss(verl)  (speed-up over compiled)",
               paired(times["compiled"], times["verl"]))
    ratio_line("compiled / kl_loss(plain)", paired(times["compiled"], times["plain"]))
    ratio_line("compiled of the floor (floor time / compiled time)",
               paired(floor, times["compiled"]))
    back_to_back(rounds, {"kl_loss": klgrad_loss("k3-as-loss"),
                          "k3 kernel": kernel_only("k3-as-loss"),
                          "k3 kernel, new outputs": steps("k3-as-loss")[OP_STEPS[0]],
                          "k1 kernel": kernel_only("k1-as-loss")}, tri, tri_bytes, n)


def kl_floor(triad_times, tri_bytes, n):
    """kl_loss's floor in each round: the least it can move (read logp, ref, 4 bytes each,
    and the mask, 1; write value and coef, 4 each; backward hands coef over without a pass)
    at the triad's bytes/s of the same round: triad time * 17 n / tri_bytes."""
    return [t * 17 * n / tri_bytes for t in triad_times]


def kl_floor_row(floor, triad_times, tri_bytes, n):
    row("floor: 17 bytes/token at the triad's bytes/s", floor, n,
        f"(triad {tri_bytes / statistics.median(triad_times) / 1e9:.1f} GB/s)")


def minor_faults():
    """Page faults of this process that the kernel served without I/O (first touches of
    newly mapped memory), so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def back_to_back(rounds, candidates, tri, tri_bytes, n, calls=20):
    """Part 2b: each call `calls` times in a row, as a loop makes it, so that each call finds
    what the previous one left in the caches (part 2's rounds shuffle the calls, each after
    another's traffic): kl_loss (k3-as-loss), the k3 kernel into given outputs and into new
    ones, the k1 kernel (no exp), and the triad; with the page faults per call (first
    touches of memory the allocator has just mapped: a new output's pages, where glibc
    returned the previous one's to the system)."""
    faults = {}

    def block(name, fn):
        def run():
            before = minor_faults()
            for _ in range(calls):
                fn()
            faults.setdefault(name, []).append((minor_faults() - before) / calls)
        return run

    times = interleaved({name: block(name, fn) for name, fn in
                         {**candidates, "triad": tri}.items()}, rounds)
    times = {k: [t / calls for t in v] for k, v in times.items()}
    floor = kl_floor(times["triad"], tri_bytes, n)
    print(f"2b. the same calls, each {calls} times back to back (time per call; page faults "
          f"per call, median)")
    header("")
    for name, label in (("kl_loss", "klgrad.torch.kl_loss('k3-as-loss')"),
                        ("k3 kernel", "klgrad.evaluate(k3-as-loss, value=, coef=)"),
                        ("k3 kernel, new outputs", "klgrad.evaluate(k3-as-loss), new outputs"),
                        ("k1 kernel", "klgrad.evaluate(k1-as-loss, value=, coef=): no exp")):
        row(label, times[name], n, f"{statistics.median(faults[name]):7.0f} faults")
    kl_floor_row(floor, times["triad"], tri_bytes, n)
    print("   ratios, median over rounds [quartiles]:")
    for name in candidates:
        ratio_line(f"{name} of the floor", paired(floor, times[name]))
    ratio_line("kl_loss / k3 kernel  (op path)", paired(times["kl_loss"], times["k3 kernel"]))


def reverse_kl_composite(z, zr):
    """KL(softmax z || softmax zr), mean over rows: log_softmax + kl_div (log targets)."""
    logp = torch.log_softmax(z, -1)
    logr = torch.log_softmax(zr, -1)
    return torch.nn.functional.kl_div(logr, logp, log_target=True, reduction="batchmean")


def exp_sum(x):
    return torch.exp(x).sum()


def logits_loss_vs_torch(rounds, rows):
    g = torch.Generator().manual_seed(0)
    V = 151936
    z0 = torch.randn(rows, V, generator=g) * 2
    zr = z0 + 0.5 * torch.randn(rows, V, generator=g)
    z = z0.clone().requires_grad_(True)
    compiled = torch.compile(reverse_kl_composite)
    both = torch.cat([z0, zr])  # the 2 x rows x V elements whose exponentials the kernel needs
    fused_exp_sum = torch.compile(exp_sum)
    tri, tri_bytes = triad()

    def composite(fn):
        def run():
            z.grad = None
            fn(z, zr).backward()
        return run

    def klgrad_loss():
        z.grad = None
        loss, _ = kt.logits_loss(z, zr, divergence="reverse-kl")
        loss.backward()

    ref_grad = None
    for fn in (composite(reverse_kl_composite), composite(compiled), klgrad_loss):
        fn()
        if ref_grad is None:
            ref_grad = z.grad.clone()
        else:
            torch.testing.assert_close(z.grad, ref_grad, rtol=1e-3, atol=1e-9)

    times = interleaved({
        "eager": composite(reverse_kl_composite),
        "compiled": composite(compiled),
        "klgrad": klgrad_loss,
        "exp_sum": lambda: fused_exp_sum(both),
        "triad": tri,
    }, rounds)
    # Floor: the exponentials of both rows at the fused exp-and-sum's rate (the same number of
    # elements, so its time), or reading both rows and writing the gradient (12 bytes per
    # entry) at the triad's rate, whichever is slower, per round.
    n = rows * V
    exp_floor = times["exp_sum"]
    byte_floor = [t * 12 * n / tri_bytes for t in times["triad"]]
    floor = [max(a, b) for a, b in zip(exp_floor, byte_floor)]
    print(f"3. logits_loss (reverse KL) forward + backward, {rows} rows x V = {V} float32; "
          f"{rounds} rounds")
    header("")
    row("PyTorch eager log_softmax + kl_div (autograd)", times["eager"], n)
    row("the same composite under torch.compile", times["compiled"], n)
    row("klgrad.torch.logits_loss(divergence='reverse-kl')", times["klgrad"], n)
    row("floor: exp-and-sum of 2 x rows x V (torch.compile'd exp().sum())", exp_floor, n,
        f"({2 * n / statistics.median(exp_floor) / 1e9:.2f} G exp/s)")
    row("(bytes: 12 per entry at the triad's bytes/s)", byte_floor, n)
    print("   ratios, median over rounds [quartiles]:")
    ratio_line("logits_loss of its floor (floor time / logits_loss time)",
               paired(floor, times["klgrad"]))
    ratio_line("eager / logits_loss  (speed-up over eager)", paired(times["eager"],
                                                                     times["klgrad"]))
    ratio_line("compiled / logits_loss  (speed-up over compiled)",
               paired(times["compiled"], times["klgrad"]))
    ratio_line("compiled of the floor (floor time / compiled time)",
               paired(floor, times["compiled"]))
    exp_sum_bound(rows, V, statistics.median(times["klgrad"]))


def exp_sum_bound(rows, V, klgrad_median):
    """The C++ bound of the same exponentials: klgrad.bench's exp-sum floor (Eigen's packet
    exp and sum over both rows, docs/performance.md), timed in its own paired rounds, not in
    the rounds above: the C++ kernel's ratio to it is paired, logits_loss's is a ratio of
    medians from separate rounds."""
    cpp = klgrad.bench(logits="reverse-kl", shape=(1, rows), vocab=V, seconds=1.0)[0]
    bound = rows / cpp["floor_items_per_second"]["median"]
    q = cpp["of_floor"]
    print(f"   against the C++ exp-sum bound (klgrad.bench, its own {cpp['rounds']} rounds: "
          f"{bound * 1e3:.3f} ms for these rows):")
    ratio_line("C++ kernel reverse-kl of the bound (paired)", (q["q1"], q["median"], q["q3"]))
    print(f"   {'logits_loss of the bound (ratio of medians)':60s} "
          f"{bound / klgrad_median:6.2f}")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="part 1: least of repeats")
    parser.add_argument("--rounds", type=int, default=15, help="parts 2 and 3: rounds")
    parser.add_argument("--rows", type=int, default=16, help="logits rows for part 3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (klgrad: 1)")
    parser.add_argument("--kl-rows", type=int, default=256,
                        help="part 2: rows of 4096 tokens (256: 2^20 tokens, issue 23's size)")
    parser.add_argument("--op-steps", action="store_true",
                        help="part 2: also time kl_loss's op path step by step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"klgrad {klgrad.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}; torch.get_num_threads() = "
          f"{torch.get_num_threads()}; nproc {os.cpu_count()}, {cpu_model()}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    evaluate_vs_kernel(args.repeats)
    op_overhead(args.repeats)
    kl_loss_vs_torch(args.rounds, args.op_steps, args.kl_rows)
    logits_loss_vs_torch(max(3, args.rounds * 2 // 3), args.rows)


if __name__ == "__main__":
    main()
