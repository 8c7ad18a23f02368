"""The device path's compiled runs (klgrad.device.set_compiled; the default on CUDA): the run's
tensor work, device.computed, through torch.compile (inductor) gives the eager device path's
results, and so the C++ kernel's within the device path's bounds (test_device.py's normwise
errors: 1e-12 in float64, 1e-5 in float32); the ops serve it, with gradients, inside an outer
torch.compile(fullgraph=True) too; a failure of the compiler falls back to the eager run
with a warning. Runs on the CPU are eager by default, so these tests turn compilation on for
the CPU; each spec, dtype and layout compiles once (inductor's C++, 5-25 s here): three
specs that take different passes (fused; the to-go scans, packed; a differentiable
sequence-mean weight)."""
import pytest

torch = pytest.importorskip("torch")

import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402
from klgrad import device  # noqa: E402
from test_device import (TOLERANCE, errors, packed_batch, padded_batch,  # noqa: E402
                         normwise)

CASES = [
    ("k3-as-loss,preset=verl", padded_batch, torch.float32),
    ("k1-in-reward,level=to-go,gamma=0.9", packed_batch, torch.float64),
    ("k2-as-loss,is=differentiable,is-level=sequence-mean,agg=seq-mean-token-mean",
     padded_batch, torch.float64),
]


@pytest.fixture
def compiled_on_cpu():
    """Runs on CPU tensors compiled for the test (and dynamo's caches fresh, so that each
    spec compiles here and counts), eager again after it."""
    torch._dynamo.reset()
    before = device.set_compiled(True, "cpu")
    yield
    device.set_compiled(before, "cpu")
    torch._dynamo.reset()


def graphs():
    """How many graphs torch.compile has made since the last reset."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def eager(fn):
    """fn() with the CPU's runs eager."""
    before = device.set_compiled(False, "cpu")
    try:
        return fn()
    finally:
        device.set_compiled(before, "cpu")


@pytest.mark.parametrize("spec,make,dtype", CASES, ids=[c[0] for c in CASES])
def test_compiled_runs_match_the_eager_run_and_the_kernel(compiled_on_cpu, spec, make, dtype):
    batch = make(dtype)
    before = graphs()
    compiled = klgrad.evaluate(spec, **batch, backend="device")
    assert graphs() > before  # it compiled,
    assert device.set_compiled(True, "cpu") is True  # and did not fall back to eager
    plain = eager(lambda: klgrad.evaluate(spec, **batch, backend="device"))
    for name in ("value", "coef"):
        assert normwise(getattr(compiled, name), getattr(plain, name)) <= TOLERANCE[dtype]
    for name in ("tokens", "sequences", "guarded", "dropped"):
        assert getattr(compiled, name) == getattr(plain, name)
    # Against the kernel, as test_device.py measures the eager device path (the compiled run
    # is what evaluate(backend="device") now takes).
    found, _ = errors(spec, batch)
    assert all(error <= TOLERANCE[dtype] for error in found.values()), found


def test_a_new_batch_shape_does_not_compile_again(compiled_on_cpu):
    spec = CASES[0][0]
    klgrad.evaluate(spec, **padded_batch(torch.float32), backend="device")
    made = graphs()
    wider = padded_batch(torch.float32, rows=7, length=19, seed=5)
    r = klgrad.evaluate(spec, **wider, backend="device")
    assert graphs() == made
    k = klgrad.evaluate(spec, **wider, backend="kernel")
    assert normwise(r.coef, k.coef) <= TOLERANCE[torch.float32]


def verl_step(logp, ref, mask):
    loss, value = kt.kl_loss("k3-as-loss,preset=verl", logp, ref, mask=mask, backend="device")
    return 2.0 * loss, value


def test_the_op_serves_compiled_runs_eagerly_and_under_an_outer_compile(compiled_on_cpu):
    """kl_loss(backend="device") with compiled runs: loss, value and gradient equal the eager
    run's, called eagerly and inside torch.compile(fullgraph=True) of a step (the op opaque
    there, its kernel running the compiled computed())."""
    batch = padded_batch(torch.float32)
    lp0, ref, mask = batch["logp"], batch["ref"], batch["mask"]

    def step(fn):
        lp = lp0.clone().requires_grad_(True)
        loss, value = fn(lp, ref, mask)
        loss.backward()
        return loss, value, lp.grad

    expected = eager(lambda: step(verl_step))
    bound = TOLERANCE[torch.float32]
    for got in (step(verl_step), step(torch.compile(verl_step, fullgraph=True))):
        for a, b in zip(got, expected):
            assert normwise(a, b) <= bound
    assert device.set_compiled(True, "cpu") is True  # no fallback to eager on the way


def test_a_compiler_failure_falls_back_to_the_eager_run(compiled_on_cpu, monkeypatch):
    def failing(*args):
        raise torch._dynamo.exc.TorchDynamoException("no compiler here")

    monkeypatch.setattr(device, "_compiled_computed", failing)
    batch = padded_batch(torch.float64)
    with pytest.warns(RuntimeWarning, match="torch.compile of the device path failed on cpu "
                                            r"tensors \(TorchDynamoException\)"):
        r = klgrad.evaluate(CASES[0][0], **batch, backend="device")
    assert device.set_compiled(True, "cpu") is False  # the failure turned it off
    k = klgrad.evaluate(CASES[0][0], **batch, backend="kernel")
    assert normwise(r.coef, k.coef) <= TOLERANCE[torch.float64]


def test_defaults_and_a_bad_setting():
    assert device.set_compiled(True, "cuda") is True  # compiled on CUDA by default
    before = device.set_compiled(False, "cpu")
    assert before is False  # eager elsewhere
    with pytest.raises(TypeError, match=r"set_compiled: enabled= must be True or False, "
                                        r"got 1"):
        device.set_compiled(1)
