"""klgrad.bench (defined here, in klgrad._bench): what a KL term costs on this machine, your
code beside klgrad and the floor.

Without tensors, the rows are the C++ kernels on a synthetic batch of the shape you give,
measured by the code `klgrad bench` runs (klgrad/bench.hpp, through the binding): tokens
(rows) per second and the ratio to this machine's floor, timed in the same rounds. With
torch tensors logp= and ref= (and mask=, old=), it also times, on their device and on the
same data, forward + backward of ``klgrad.torch.kl_loss`` and of your own ``fn(logp, ref,
old)`` (the per-token term, as ``klgrad.testing.assert_matches`` takes it), beside the floor
on that device: a triad over the bytes the kernel moves. docs/python.md and
docs/performance.md say how to read the table.
"""
import json
import math
import random
import statistics
import time

from . import _klgrad

__all__ = ["bench", "BenchResult"]


def _names(x, name):
    """A str (or Spec), or a list of them, as a list of str; None as []."""
    if x is None:
        return []
    items = [x] if isinstance(x, (str, _klgrad.Spec)) else list(x)
    for item in items:
        if not isinstance(item, (str, _klgrad.Spec)):
            raise TypeError(f"{name}= takes a str or a list of str, got {type(item).__name__}")
    return [str(item) for item in items]


def _positive_int(x, name):
    if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
        raise ValueError(f"{name}= must be a positive int, got {x!r}")
    return x


def _batch(shape, tokens, lengths, logp):
    """(sequences, positions, tokens, lengths) of the batch the arguments describe."""
    if logp is not None:
        if shape is not None or tokens is not None:
            raise ValueError("shape=/tokens= describe a synthetic batch; with logp= the batch "
                             "is logp's own")
        if logp.dim() != 2:
            raise ValueError(f"logp= has shape {tuple(logp.shape)}; klgrad.bench takes a padded "
                             "B x T batch (packed batches: tokens=, lengths= without tensors)")
        shape = tuple(logp.shape)
    if shape is not None and tokens is not None:
        raise ValueError("shape= (a padded batch) and tokens= (a packed one) exclude each other")
    if lengths is not None and tokens is None:
        raise ValueError("lengths= describes a packed batch: give tokens= with it")
    if shape is not None:
        if len(shape) != 2:
            raise ValueError(f"shape= must be (B, T), got {shape!r}")
        return (_positive_int(shape[0], "shape[0]"), _positive_int(shape[1], "shape[1]"), 0, [])
    if tokens is None:
        raise ValueError("no batch: give shape=(B, T), tokens=N (packed), or logp= and ref=")
    lengths = [] if lengths is None else [_positive_int(n, "lengths[i]") for n in lengths]
    return (0, 0, _positive_int(tokens, "tokens"), lengths)


def _kernel_row(kind, name, batch, vocab, dtype, threads, seconds):
    """One C++ kernel row, measured by the binding (the code `klgrad bench` runs)."""
    sequences, positions, tokens, lengths = batch
    row = json.loads(_klgrad.bench_kernel(kind, name, sequences, positions, tokens, lengths,
                                          vocab, dtype, threads, seconds))
    row["kernel"] = f"C++ kernel {name}"
    row["device"] = "cpu"
    return row


def _quartiles(xs):
    if len(xs) < 2:
        return {"q1": xs[0], "median": xs[0], "q3": xs[0]}
    q1, median, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"q1": q1, "median": median, "q3": q3}


def _clock(device):
    """time(f) -> seconds f() takes on `device`: CUDA events around it (the wait for them
    outside the interval), else the wall clock."""
    import torch
    if device.type == "cuda":
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))

        def cuda_time(f):
            start.record()
            f()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return cuda_time

    def wall_time(f):
        begin = time.perf_counter()
        f()
        return time.perf_counter() - begin
    return wall_time


def _interleaved(candidates, seconds, clock, min_rounds=5, warmup=2):
    """{name: [seconds per round]}: every candidate once per round, in an order shuffled each
    round (a fixed seed, so that a run repeats), after `warmup` untimed calls of each, until
    seconds per candidate are spent and min_rounds have run. Shuffled, not rotated: a
    candidate runs after what the previous one left in the allocator and the caches, and a
    rotation gives each candidate the same predecessor in every round (python_bench's
    kl_loss after the compiled composite's frees measured 1.7x its kernel, the same op after
    another kl_loss 1.3x)."""
    names = list(candidates)
    shuffler = random.Random(0)
    for name in names:
        for _ in range(warmup):
            clock(candidates[name])
    times = {name: [] for name in names}
    budget, begin, r = seconds * len(names), time.perf_counter(), 0
    while r < min_rounds or time.perf_counter() - begin < budget:
        round_names = names[:]
        shuffler.shuffle(round_names)
        for name in round_names:
            times[name].append(clock(candidates[name]))
        r += 1
    return times


class _TorchBatch:
    """The user's tensors, and forward + backward steps over them."""

    def __init__(self, logp, ref, mask, old):
        import torch
        if not isinstance(logp, torch.Tensor) or not isinstance(ref, torch.Tensor):
            raise TypeError("logp= and ref= must be torch tensors")
        if ref.shape != logp.shape:
            raise ValueError(f"ref= has shape {tuple(ref.shape)} but logp= has shape "
                             f"{tuple(logp.shape)}")
        self.logp, self.ref, self.mask, self.old = logp.detach(), ref.detach(), mask, old
        self.weights = None if mask is None else mask.to(logp.dtype)
        self.count = None if mask is None else self.weights.sum()

    def user_step(self, fn):
        """fn's per-token term, masked mean, backward to logp."""
        def step():
            leaf = self.logp.detach().requires_grad_(True)
            old = self.logp if self.old is None else self.old
            out = fn(leaf, self.ref, old)
            loss = out.mean() if self.weights is None else (out * self.weights).sum() / self.count
            loss.backward()
        return step

    def klgrad_step(self, spec, backend):
        """klgrad.torch.kl_loss, backward to logp (backend= passed only when given)."""
        from . import torch as kt
        extra = {} if backend is None else {"backend": backend}

        def step():
            leaf = self.logp.detach().requires_grad_(True)
            loss, _ = kt.kl_loss(spec, leaf, self.ref, mask=self.mask, behavior=self.old,
                                 **extra)
            loss.backward()
        return step

    def floor_step(self, bytes_per_token):
        """A triad a = b + 3 c on logp's device over as many bytes as the kernel moves."""
        import torch
        size = self.logp.element_size()
        n = max(1, int(self.logp.numel() * bytes_per_token / (3 * size)))
        a, b, c = (torch.ones(n, dtype=self.logp.dtype, device=self.logp.device)
                   for _ in range(3))
        return lambda: torch.add(b, c, alpha=3, out=a)


def _torch_rows(batch, spec, fn, bytes_per_token, seconds, backend):
    """Rows for fn, kl_loss and the floor, timed in the same rounds on the tensors' device."""
    candidates = {}
    if fn is not None:
        candidates["your fn (forward + backward)"] = batch.user_step(fn)
    candidates[f"klgrad.torch.kl_loss {spec} (forward + backward)"] = batch.klgrad_step(spec, backend)
    floor = f"floor: triad over the kernel's bytes ({batch.logp.device.type})"
    candidates[floor] = batch.floor_step(bytes_per_token)
    times = _interleaved(candidates, seconds, _clock(batch.logp.device))
    items = batch.logp.numel()
    rows = []
    for name, ts in times.items():
        rows.append({
            "kernel": name, "kind": "floor" if name == floor else "torch",
            "device": str(batch.logp.device), "unit": "tokens", "items": items,
            "rounds": len(ts), "items_per_second": _quartiles([items / t for t in ts]),
            "of_floor": _quartiles([f / t for f, t in zip(times[floor], ts)]),
            "allocations_per_call": None})
    return rows


def _si(x):
    """158.9 M: a rate with an SI prefix."""
    for prefix in ("", " k", " M", " G"):
        if x < 1000:
            return f"{x:.4g}{prefix}"
        x /= 1000
    return f"{x:.4g} T"


def _vectors(row):
    """The vectors the C++ rows ran on and, where this CPU offers wider ones, what uses them
    (the extension is built for its machine unless KLGRAD_PYTHON_NATIVE=OFF)."""
    built, cpu = row["vector_isa"], row["cpu_vector_isa"]
    if cpu in (built, "unknown"):
        return f"C++ rows: {built} vectors"
    return (f"C++ rows: {built} vectors; this CPU offers {cpu} vectors, which an extension "
            f"built for this machine uses (docs/python.md)")


class BenchResult(list):
    """The rows of klgrad.bench, each a dict: kernel, kind, device, unit (tokens or rows),
    items, rounds, items_per_second and of_floor (each {q1, median, q3} over the rounds),
    allocations_per_call (None where not counted; `klgrad bench` counts them), and for the
    C++ kernel rows the fields of `klgrad bench --format json`. `title` names the batch;
    str() is a table."""

    title = "klgrad.bench"

    def __str__(self):
        labels = [f"{r['kernel']} ({r['unit']})" for r in self]
        width = max([32] + [len(label) for label in labels])
        kernel = next((r for r in self if "vector_isa" in r), None)
        lines = [self.title] + ([] if kernel is None else [_vectors(kernel)]) + [
            f"{'row (unit)':{width}s} {'per second':>10s} {'[q1, q3]':>22s} "
            f"{'of floor':>8s} {'[q1, q3]':>14s} {'rounds':>6s}"]
        for label, r in zip(labels, self):
            rate, ratio = r["items_per_second"], r["of_floor"]
            interval = f"[{_si(rate['q1'])}, {_si(rate['q3'])}]"
            ratios = f"[{ratio['q1']:.2f}, {ratio['q3']:.2f}]"
            lines.append(f"{label:{width}s} {_si(rate['median']):>10s} "
                         f"{interval:>22s} {ratio['median']:8.2f} {ratios:>14s} "
                         f"{r['rounds']:6d}")
        lines.append("of floor: floor time / row time in each round (median, quartiles); the "
                     "C++ kernel rows against\nthe C++ floor timed in their own rounds (triad or "
                     "exp-sum, docs/performance.md)")
        return "\n".join(lines)


def _title(batch, vocab, dtype, threads, seconds, logp):
    sequences, positions, tokens, _ = batch
    shape = f"{tokens} packed tokens" if tokens else f"{sequences} x {positions} tokens"
    where = "" if logp is None else f", your tensors on {logp.device}"
    logits = f", V = {vocab} logits per row" if vocab else ""
    return (f"klgrad.bench: {shape}{logits}, {dtype}{where}, {threads} thread(s) for the C++ "
            f"rows, {seconds:g} s per row")


def bench(spec=None, *, logits=None, shape=None, tokens=None, lengths=None, vocab=None,
          dtype=None, threads=1, seconds=1.0, logp=None, ref=None, mask=None, old=None,
          fn=None, backend=None):
    """Measure KL terms on this machine; returns a BenchResult (str() is a table).

    spec: a spec (str or klgrad.Spec) or a list of them, the sampled-token kernel;
    logits: a divergence (reverse-kl, forward-kl, jensen-shannon) or a list, the
    full-vocabulary kernel with its gradient (needs vocab=). The batch is synthetic,
    shape=(B, T) padded or tokens=N packed with lengths= cycled, or the shape of logp=.
    dtype: "float" (default), "double", or for logits "bf16" / "fp16"; threads: threads
    sharing each call; seconds: time budget per row (> 0).

    With torch tensors logp=, ref= (mask=, old= optional; B x T), the rows also hold,
    timed in the same rounds on their device: fn(logp, ref, old) forward + backward (its
    masked mean), klgrad.torch.kl_loss forward + backward for each spec, and the floor (a
    triad over the bytes the C++ kernel moves per token). backend= is passed to kl_loss only
    when given. On CUDA the torch rows are timed with CUDA events after a warm-up; the C++
    kernel rows always run on the CPU.
    """
    specs, divergences = _names(spec, "spec"), _names(logits, "logits")
    if not specs and not divergences:
        raise ValueError("nothing to measure: give spec= (a spec or a list) or logits= (a "
                         "divergence or a list)")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds= must be a time budget > 0 per row, got {seconds!r}")
    threads = _positive_int(threads, "threads")
    if (logp is None) != (ref is None):
        raise ValueError("give logp= and ref= together (torch tensors)")
    if fn is not None and (logp is None or not specs):
        raise ValueError("fn= is timed beside klgrad on your tensors: give logp=, ref= and the "
                         "spec= it implements")
    if divergences and (vocab is None or vocab <= 0):
        raise ValueError(f"logits= needs vocab= > 0 (the logits per row), got {vocab!r}")
    batch = _batch(shape, tokens, lengths, logp)
    if dtype is None:
        dtype = "float" if logp is None else {"torch.float32": "float",
                                              "torch.float64": "double"}.get(str(logp.dtype))
        if dtype is None:
            raise ValueError(f"logp= has dtype {logp.dtype}; klgrad computes in float32 or "
                             "float64")
    rows = BenchResult()
    rows.title = _title(batch, vocab, dtype, threads, seconds, logp)
    torch_batch = None if logp is None else _TorchBatch(logp, ref, mask, old)
    for name in specs:
        kernel = _kernel_row("spec", name, batch, 0, dtype, threads, seconds)
        if torch_batch is not None:
            rows += _torch_rows(torch_batch, name, fn, kernel["bytes_per_item"], seconds, backend)
        rows.append(kernel)
    for name in divergences:
        rows.append(_kernel_row("logits", name, batch, vocab, dtype, threads, seconds))
    return rows
