#!/usr/bin/python3
"""PyTorch's composite for the full-vocabulary divergences, timed on the shapes of
bench/logits_bench.cpp: log_softmax of both rows, then kl_div (value), and the same with
backward through the policy logits (value + gradient). Single thread, float32, CPU.

Run: /usr/bin/python3 bench/peer_logits.py [--threads 1] [--repeats 5] [--max-rows 4096]
Prints one line per shape with rows/s and the milliseconds per call, as a Markdown table.
Times are process CPU time (like the C++ benchmark's CPU column): on a shared machine wall
time mostly measures the other processes; with one torch thread CPU time is the work.
"""
import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(32000, 64), (32000, 256), (32000, 1024), (32000, 4096),
          (151936, 64), (151936, 256), (151936, 1024)]


def rkl_value(z, ref):
    lp = F.log_softmax(z, dim=-1)
    lr = F.log_softmax(ref, dim=-1)
    # kl_div(input, target) = sum target * (log target - input): KL(pi || ref) with
    # input = log ref, target = log pi.
    return F.kl_div(lr, lp, reduction="none", log_target=True).sum(-1)


def fkl_value(z, ref):
    lp = F.log_softmax(z, dim=-1)
    lr = F.log_softmax(ref, dim=-1)
    return F.kl_div(lp, lr, reduction="none", log_target=True).sum(-1)


def timed(fn, repeats):
    fn()  # warm up (allocator, first-touch)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-rows", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(7)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32")
    print("| V | rows | rkl value ms | rkl rows/s | rkl value+grad ms | rkl+grad rows/s |"
          " fkl value ms | fkl value+grad ms |")
    print("|---|---|---|---|---|---|---|---|")
    for v, n in SHAPES:
        if n > args.max_rows:
            continue
        z0 = torch.randn(n, v, generator=gen) * 2
        ref = z0 + 0.5 * torch.randn(n, v, generator=gen)
        z = z0.clone().requires_grad_(True)

        def value(kind):
            with torch.no_grad():
                return kind(z0, ref)

        def value_grad(kind):
            z.grad = None
            kind(z, ref).mean().backward()

        t_rv = timed(lambda: value(rkl_value), args.repeats)
        t_rg = timed(lambda: value_grad(rkl_value), args.repeats)
        t_fv = timed(lambda: value(fkl_value), args.repeats)
        t_fg = timed(lambda: value_grad(fkl_value), args.repeats)
        print(f"| {v} | {n} | {t_rv * 1e3:.2f} | {n / t_rv:.0f} | {t_rg * 1e3:.2f} | "
              f"{n / t_rg:.0f} | {t_fv * 1e3:.2f} | {t_fg * 1e3:.2f} |", flush=True)
        del z0, ref, z


if __name__ == "__main__":
    main()
