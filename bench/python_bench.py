"""The Python package's throughput, side by side in one run (docs/performance.md):

1. klgrad.evaluate from numpy, 64 x 2048 float32, k3-as-loss with a mask, against the C++
   kernel's own time on the same arrays (klgrad._klgrad.kernel_seconds: the same compiled
   kernel called from C++), and the fixed overhead of a call (a 1 x 1 batch);
2. klgrad.torch.kl_loss forward + backward against PyTorch autograd of verl's low_var_kl
   (forward + backward) on 2^20 tokens, and the floor set by the bytes kl_loss must move
   at the rate of a triad (c = a + b) measured in the same run;
3. klgrad.torch.logits_loss (reverse KL) forward + backward against PyTorch's
   log_softmax + kl_div composite at V = 151,936.

Each time is the least of `--repeats` runs after a warm-up. Run with the installed package:
    .venv/bin/python bench/python_bench.py
"""
import argparse
import time

import numpy as np
import torch

import klgrad
import klgrad.torch as kt


def least_seconds(fn, repeats):
    """The least wall time of `repeats` calls after a warm-up (as kernel_seconds reports)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def row(name, seconds, baseline=None, items=None):
    ratio = f"{baseline / seconds:8.2f}x" if baseline else " " * 9
    rate = f"{items / seconds / 1e6:10.1f} M/s" if items else ""
    print(f"{name:58s} {seconds * 1e6:12.1f} us {ratio} {rate}")


def evaluate_vs_kernel(repeats):
    rng = np.random.default_rng(0)
    lp = rng.normal(-2, 0.5, (64, 2048)).astype(np.float32)
    lr = (lp + rng.normal(0, 0.1, lp.shape)).astype(np.float32)
    mask = rng.random(lp.shape) < 0.9
    spec = klgrad.Spec("k3-as-loss")
    value, coef = np.empty_like(lp), np.empty_like(lp)
    kernel = klgrad._klgrad.kernel_seconds(spec, lp, lr, mask, repeats)
    python = least_seconds(lambda: klgrad.evaluate(spec, lp, lr, mask=mask, value=value,
                                                    coef=coef), repeats)
    fresh = least_seconds(lambda: klgrad.evaluate(spec, lp, lr, mask=mask), repeats)
    one = np.zeros((1, 1), np.float32)
    overhead = least_seconds(lambda: klgrad.evaluate(spec, one, one), repeats * 10)
    print("1. evaluate, 64 x 2048 float32, k3-as-loss, bool mask")
    row("   C++ kernel (kernel_seconds, least of repeats)", kernel, items=lp.size)
    row("   klgrad.evaluate(numpy, value=, coef=)", python, items=lp.size)
    row("   klgrad.evaluate(numpy), new outputs", fresh, items=lp.size)
    row("   klgrad.evaluate on a 1 x 1 batch (fixed call overhead)", overhead)
    print(f"   evaluate / kernel = {python / kernel:.2f} (outputs given), "
          f"{fresh / kernel:.2f} (new outputs)")


def triad_bytes_per_second(repeats):
    """The machine's limit in this run: bytes/s of c = a + b over 3 x 16 MB float32 arrays
    (torch.add, one thread), the rate a streaming kernel can reach."""
    a, b, c = (torch.rand(1 << 22) for _ in range(3))
    return 12 * a.numel() / least_seconds(lambda: torch.add(a, b, out=c), repeats)


def verl_low_var_kl(lp, lr):
    x = torch.clamp(lr - lp, -20, 20)
    return torch.clamp(torch.exp(x) - x - 1, -10, 10)


def kl_loss_vs_torch(repeats):
    g = torch.Generator().manual_seed(0)
    shape = (256, 4096)  # 2^20 tokens
    lp0 = -torch.rand(shape, generator=g) * 3
    lr = lp0 + 0.1 * torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < 0.9
    maskf = mask.float()
    lp = lp0.clone().requires_grad_(True)

    def composite():
        lp.grad = None
        loss = (verl_low_var_kl(lp, lr) * maskf).sum() / maskf.sum()
        loss.backward()

    def klgrad_loss(spec):
        def run():
            lp.grad = None
            loss, _ = kt.kl_loss(spec, lp, lr, mask=mask)
            loss.backward()
        return run

    base = least_seconds(composite, repeats)
    # The least kl_loss can move: read logp, ref (4 bytes each) and the mask (1), write value
    # and coef (4 each); backward hands coef over without a pass. At the triad's rate:
    floor = 17 * lp.numel() / triad_bytes_per_second(repeats)
    print("2. kl_loss forward + backward, 2^20 tokens float32 (256 x 4096), bool mask")
    row("   PyTorch autograd of verl low_var_kl (masked mean)", base, items=lp.numel())
    for spec in ("k3-as-loss,preset=verl", "k3-as-loss"):
        ours = least_seconds(klgrad_loss(klgrad.Spec(spec)), repeats)
        row(f"   klgrad.torch.kl_loss('{spec}')", ours, base, lp.numel())
    row("   floor: 17 bytes per token at the triad's bytes/s (this run)", floor, base,
        lp.numel())


def logits_loss_vs_torch(repeats, rows):
    g = torch.Generator().manual_seed(0)
    V = 151936
    z0 = torch.randn(rows, V, generator=g) * 2
    zr = z0 + 0.5 * torch.randn(rows, V, generator=g)
    z = z0.clone().requires_grad_(True)

    def composite():  # reverse KL(pi || ref), mean over rows
        z.grad = None
        logp = torch.log_softmax(z, -1)
        logr = torch.log_softmax(zr, -1)
        loss = torch.nn.functional.kl_div(logr, logp, log_target=True, reduction="batchmean")
        loss.backward()

    def klgrad_loss():
        z.grad = None
        loss, _ = kt.logits_loss(z, zr, divergence="reverse-kl")
        loss.backward()

    base = least_seconds(composite, repeats)
    ours = least_seconds(klgrad_loss, repeats)
    print(f"3. logits_loss (reverse KL) forward + backward, {rows} rows x V = {V} float32")
    row("   PyTorch log_softmax + kl_div (autograd)", base, items=rows * V)
    row("   klgrad.torch.logits_loss(divergence='reverse-kl')", ours, base, rows * V)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rows", type=int, default=16, help="logits rows for part 3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (klgrad: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"klgrad {klgrad.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"torch threads {torch.get_num_threads()}")
    evaluate_vs_kernel(args.repeats)
    kl_loss_vs_torch(args.repeats)
    logits_loss_vs_torch(max(3, args.repeats // 4), args.rows)


if __name__ == "__main__":
    main()
