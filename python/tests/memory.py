"""The peak of the bytes torch's CPU allocator holds while a call runs: the memory tests of
test_linear.py and test_logits.py."""
from torch.profiler import ProfilerActivity, profile


def peak_allocated(fn):
    """The peak of the bytes that torch's CPU allocator holds while fn() runs, above what it
    held when fn started, and fn's result. torch.profiler with profile_memory=True records
    every allocation and free through c10's allocator (the "[memory]" events, with signed
    byte counts); their running sum in time order is the bytes held. What does not go through
    torch's allocator is not seen: the C++ kernel's workspace for JSD and FKL (2 V floats) and
    BLAS's internal buffers, none of them N x V."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return peak, out
