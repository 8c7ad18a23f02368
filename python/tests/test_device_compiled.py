"""The device path's compiled runs (klgrad.device.set_compiled; the default on CUDA): the run's
tensor work, device.computed, through torch.compile (inductor) gives the eager device path's
results, and so the C++ kernel's within the device path's bounds (test_device.py's normwise
errors: 1e-12 in float64, 1e-5 in float32); the ops serve it, with gradients, inside an outer
torch.compile(fullgraph=True) too; a failure of the compiler falls back to the eager run
with a warning. Each test runs on the CPU, where runs are eager by default (the tests turn
compilation on: inductor's C++), and again on CUDA where there is a GPU (Triton). Each spec,
dtype and layout compiles once (5-25 s a form on the project machine): three specs that
take different passes (fused; the to-go scans, packed; a differentiable sequence-mean
weight)."""
import pytest

torch = pytest.importorskip("torch")

import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402
from klgrad import device  # noqa: E402
from test_device import TOLERANCE, normwise, packed_batch, padded_batch  # noqa: E402

CASES = [
    ("k3-as-loss,preset=verl", padded_batch, torch.float32),
    ("k1-in-reward,level=to-go,gamma=0.9", packed_batch, torch.float64),
    ("k2-as-loss,is=differentiable,is-level=sequence-mean,agg=seq-mean-token-mean",
     padded_batch, torch.float64),
]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture(params=DEVICES)
def compiled_on(request):
    """A device type whose runs are compiled for the test (dynamo's caches fresh, so that each
    form compiles here and counts), set back after it."""
    torch._dynamo.reset()
    with device.compiled_runs(True, request.param):
        yield request.param
    torch._dynamo.reset()


def graphs():
    """How many graphs torch.compile has made since the last reset."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def eager(fn, device_type):
    """fn() with the runs on `device_type` eager."""
    with device.compiled_runs(False, device_type):
        return fn()


def on(device_type, batch):
    """The batch's tensors on `device_type` (offsets stay where they are: B + 1 numbers)."""
    return {n: x.to(device_type) if isinstance(x, torch.Tensor) and n != "offsets" else x
            for n, x in batch.items()}


@pytest.mark.parametrize("spec,make,dtype", CASES, ids=[c[0] for c in CASES])
def test_compiled_runs_match_the_eager_run_and_the_kernel(compiled_on, spec, make, dtype):
    batch = make(dtype)
    here = on(compiled_on, batch)
    before = graphs()
    compiled = klgrad.evaluate(spec, **here, backend="device")
    assert graphs() > before and device.is_compiled(compiled_on)  # compiled, no fallback
    plain = eager(lambda: klgrad.evaluate(spec, **here, backend="device"), compiled_on)
    kernel = klgrad.evaluate(spec, **batch, backend="kernel")
    bound = TOLERANCE[dtype]
    for name in ("value", "coef"):
        got = getattr(compiled, name).cpu()
        assert normwise(got, getattr(plain, name).cpu()) <= bound
        assert normwise(got, getattr(kernel, name)) <= bound
    scale = max(kernel.value.abs().max().item(), 1e-300)
    for name in ("loss", "kl", "kl_sequence"):
        a, b = getattr(compiled, name), getattr(kernel, name)
        assert abs(a - b) / max(abs(b), scale) <= bound, name
    for name in ("tokens", "sequences", "guarded", "dropped"):
        assert getattr(compiled, name) == getattr(plain, name) == getattr(kernel, name)


def test_a_new_batch_shape_does_not_compile_again(compiled_on):
    spec = CASES[0][0]
    klgrad.evaluate(spec, **on(compiled_on, padded_batch(torch.float32)), backend="device")
    made = graphs()
    wider = padded_batch(torch.float32, rows=7, length=19, seed=5)
    r = klgrad.evaluate(spec, **on(compiled_on, wider), backend="device")
    assert graphs() == made
    k = klgrad.evaluate(spec, **wider, backend="kernel")
    assert normwise(r.coef.cpu(), k.coef) <= TOLERANCE[torch.float32]


def verl_step(logp, ref, mask):
    loss, value = kt.kl_loss("k3-as-loss,preset=verl", logp, ref, mask=mask, backend="device")
    return 2.0 * loss, value


def test_the_op_serves_compiled_runs_eagerly_and_under_an_outer_compile(compiled_on):
    """kl_loss(backend="device") with compiled runs: loss, value and gradient equal the eager
    run's, called eagerly and inside torch.compile(fullgraph=True) of a step (the op opaque
    there, its kernel running the compiled computed())."""
    batch = on(compiled_on, padded_batch(torch.float32))
    lp0, ref, mask = batch["logp"], batch["ref"], batch["mask"]

    def step(fn):
        lp = lp0.clone().requires_grad_(True)
        loss, value = fn(lp, ref, mask)
        loss.backward()
        return loss, value, lp.grad

    expected = eager(lambda: step(verl_step), compiled_on)
    bound = TOLERANCE[torch.float32]
    for got in (step(verl_step), step(torch.compile(verl_step, fullgraph=True))):
        for a, b in zip(got, expected):
            assert normwise(a.cpu(), b.cpu()) <= bound
    assert device.is_compiled(compiled_on)  # no fallback to eager on the way


def test_a_compiler_failure_falls_back_to_the_eager_run(monkeypatch):
    def failing(*args):
        raise torch._dynamo.exc.TorchDynamoException("no compiler here")

    monkeypatch.setattr(device, "_compiled_computed", failing)
    batch = padded_batch(torch.float64)
    with device.compiled_runs(True, "cpu"):
        with pytest.warns(RuntimeWarning, match="torch.compile of the device path failed on "
                                                r"cpu tensors \(TorchDynamoException\)"):
            r = klgrad.evaluate(CASES[0][0], **batch, backend="device")
        assert not device.is_compiled("cpu")  # the failure turned it off
    k = klgrad.evaluate(CASES[0][0], **batch, backend="kernel")
    assert normwise(r.coef, k.coef) <= TOLERANCE[torch.float64]


def test_defaults_and_a_bad_setting():
    assert device.is_compiled("cuda") and device.is_compiled()  # compiled on CUDA by default
    assert not device.is_compiled("cpu")  # eager elsewhere
    with pytest.raises(TypeError, match=r"set_compiled: enabled= must be True or False, "
                                        r"got 1"):
        device.set_compiled(1)
    for name in ("cdua", "cuda:0", "", None):
        with pytest.raises(ValueError, match=r"set_compiled: device_type= must be a torch "
                                             r"device type \("):
            device.set_compiled(True, name)
    assert device.is_compiled("cuda") and not device.is_compiled("cpu")  # nothing changed
    with device.compiled_runs(True, "cpu"):
        assert device.is_compiled("cpu")
    assert not device.is_compiled("cpu")  # restored
