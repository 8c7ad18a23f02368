"""The Triton row kernels (klgrad.triton_logits, backend="triton") under Triton's
interpreter, against the C++ kernel (backend="kernel"), which stays the reference: the same
call on the same tensors, in float32 and, as a second oracle, in float64 on the same
(widened) logits. float16 logits against the C++ kernel on the same float16 logits.

Errors: a value's relative error |a - b| / |b| per row; a gradient's per row
max |a - b| / max |b| (the gradient's own scale: entries far below it carry no relative
accuracy in float32 in either kernel); the loss's relative error. The tolerance is the
issue's, 1e-5, against the float64 kernel (check_against_kernel says how the float32 kernel
is compared).

Logits: N(0, 2) for the policy, the reference = policy + N(0, 1) (a reference near the
policy, as in RL and distillation), V = 3001 (not a power of two: two blocks of 2048, the
second partial) unless said; every 11th vocabulary entry -inf in both rows in the cases
named "-inf".
"""
import numpy as np
import pytest
import torch

import klgrad
from klgrad.testing import relative_error as value_error
from klgrad.testing import row_relative_error as grad_error

FULL = ["reverse-kl", "forward-kl", "jensen-shannon"]
TOP_K = ["forward-kl-top-k", "reverse-kl-top-k", "forward-kl-top-k-tail",
         "reverse-kl-top-k-tail"]
TOL = 1e-5


def logits(rows=4, vocab=3001, seed=0, masked_vocab=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g) * 2
    zr = z + torch.randn(rows, vocab, generator=g)
    if masked_vocab:
        z[:, 5::11] = -float("inf")
        zr[:, 5::11] = -float("inf")
    return z.to(dtype), zr.to(dtype)


def both(z, zr, **kw):
    """(Triton, C++ kernel) results of one call."""
    return (klgrad.logits_divergence(z, zr, backend="triton", **kw),
            klgrad.logits_divergence(z, zr, backend="kernel", **kw))


def errors_between(a, b):
    return {"value": value_error(a.value, b.value), "grad": grad_error(a.grad, b.grad),
            "loss": abs(a.loss - b.loss) / abs(b.loss)}


def check_against_kernel(name, z, zr, record_error, **kw):
    """Triton against the C++ kernel in float64 on the same logits widened (the exact
    oracle): within 1e-5; against the C++ kernel on the same tensors (float32 compute):
    within 1e-5 plus that kernel's own error against float64 (the triangle inequality; the
    float32 C++ kernel's error reaches 2e-5 on small Jensen-Shannon values). Counts and
    top-k indices equal the kernel's."""
    tri, ker = both(z, zr, **kw)
    exact = klgrad.logits_divergence(z.double(), zr.double(), backend="kernel", **kw)
    assert tri.value.dtype == ker.value.dtype and tri.grad.dtype == ker.grad.dtype
    to_exact, to_kernel = errors_between(tri, exact), errors_between(tri, ker)
    kernel_own = errors_between(ker, exact)
    dtype = str(z.dtype)[6:]
    for what in to_exact:
        record_error(f"{name} {dtype} {what} vs float64 kernel", to_exact[what])
        record_error(f"{name} {dtype} {what} vs {dtype} kernel", to_kernel[what])
        record_error(f"({name} {dtype} {what}: the {dtype} kernel vs float64)",
                     kernel_own[what])
        assert to_exact[what] <= TOL, (what, to_exact[what])
        assert to_kernel[what] <= TOL + kernel_own[what], (what, to_kernel[what])
    assert (tri.rows, tri.sequences) == (ker.rows, ker.sequences)
    if ker.indices is not None:
        assert torch.equal(tri.indices, ker.indices)
        assert torch.equal(tri.indices, exact.indices)
    return tri, ker


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
@pytest.mark.parametrize("divergence,lam", [("reverse-kl", 0.5), ("forward-kl", 0.5),
                                            ("jensen-shannon", 0.1),
                                            ("jensen-shannon", 0.5),
                                            ("jensen-shannon", 0.9)])
def test_full_divergences_match_the_kernel(divergence, lam, temperature, record_error):
    z, zr = logits(seed=1)
    check_against_kernel(divergence, z, zr, record_error, divergence=divergence, lam=lam,
                         temperature=temperature)


@pytest.mark.parametrize("temperature,top_k", [(0.7, 37), (2.0, 1), (1.0, 3001)])
@pytest.mark.parametrize("divergence", TOP_K)
def test_top_k_forms_match_the_kernel(divergence, temperature, top_k, record_error):
    z, zr = logits(seed=2)
    check_against_kernel(divergence, z, zr, record_error, divergence=divergence,
                         temperature=temperature, top_k=top_k)


@pytest.mark.parametrize("divergence", FULL + TOP_K)
def test_float16_matches_the_kernel_on_the_same_logits(divergence, record_error):
    z, zr = logits(seed=3, dtype=torch.float16)
    top_k = 20 if divergence in TOP_K else None
    check_against_kernel(divergence, z, zr, record_error, divergence=divergence,
                         temperature=0.7, top_k=top_k)


@pytest.mark.parametrize("divergence", FULL + TOP_K)
def test_minus_inf_logits_and_masked_rows(divergence, record_error):
    """-inf vocabulary entries in both rows; rows 2 and 5 masked and holding NaN (never
    read: value 0, gradient 0, indices -1); the top-k forms with more entries asked than a
    row has finite ones (K's last entries are -inf ties, going to the smaller index)."""
    z, zr = logits(rows=8, vocab=300, seed=4, masked_vocab=True)
    mask = torch.ones(8, dtype=torch.bool)
    mask[[2, 5]] = False
    z[2], zr[5] = float("nan"), float("nan")
    if divergence in TOP_K:
        z[0, 20:], zr[0, 20:] = -float("inf"), -float("inf")  # 19 finite entries < k = 25
    tri, _ = check_against_kernel(f"{divergence} -inf", z, zr, record_error, mask=mask,
                                  divergence=divergence, top_k=25 if divergence in TOP_K
                                  else None)
    assert torch.all(tri.value[[2, 5]] == 0) and torch.all(tri.grad[[2, 5]] == 0)
    if divergence in TOP_K:
        assert torch.all(tri.indices[[2, 5]] == -1)


def test_a_padded_batch_of_64_rows_at_v_4096(record_error):
    """B x T x V = 4 x 16 x 4096 with a B x T mask: counts, loss and sequences as the
    kernel's (token-mean over the valid rows)."""
    z, zr = logits(rows=64, vocab=4096, seed=5)
    mask = torch.rand(4, 16, generator=torch.Generator().manual_seed(6)) > 0.3
    mask[3] = False  # an empty sequence
    tri, ker = check_against_kernel("reverse-kl 4 x 16 x 4096", z.view(4, 16, 4096),
                                    zr.view(4, 16, 4096), record_error, mask=mask)
    assert tri.value.shape == (4, 16) and tri.grad.shape == (4, 16, 4096)
    assert tri.sequences == 3 and tri.rows == int(mask.sum())


@pytest.mark.parametrize("divergence", FULL + ["forward-kl-top-k-tail",
                                               "reverse-kl-top-k-tail"])
def test_identical_rows_have_a_zero_gradient(divergence):
    """pi = ref: every form whose value is then 0 (not the renormalised top-k forms) gets a
    value and a gradient of exactly 0 (log pi - log ref, and the log-ratio to the mixture,
    are exact zeros there). The C++ kernel's are 0 too but for jensen-shannon, whose float
    log M leaves ~1e-12."""
    z, _ = logits(rows=4, vocab=1000, seed=7)
    top_k = 10 if "top-k" in divergence else None
    r = klgrad.logits_divergence(z, z.clone(), backend="triton", divergence=divergence,
                                 top_k=top_k, temperature=0.7, lam=0.3)
    assert torch.all(r.grad == 0) and torch.all(r.value == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("divergence", ["jensen-shannon", "reverse-kl-top-k-tail"])
def test_gradient_in_place_and_into_a_buffer(divergence, dtype):
    """grad_in_place=True writes over the logits what a new gradient in the logits' dtype
    holds, bit for bit (each block is read before it is written); grad= writes into the
    caller's buffer; on the kernel backend too."""
    z, zr = logits(rows=4, vocab=700, seed=8, dtype=dtype)
    kw = dict(divergence=divergence, top_k=9 if "top-k" in divergence else None)
    fresh = klgrad.logits_divergence(z, zr, backend="triton", grad_dtype=dtype, **kw)
    for backend in ("triton", "kernel"):
        expected = fresh if backend == "triton" else klgrad.logits_divergence(
            z, zr, backend="kernel", grad_dtype=dtype, **kw)
        own = z.clone()
        r = klgrad.logits_divergence(own, zr, backend=backend, grad_in_place=True, **kw)
        assert r.grad is own and torch.equal(own, expected.grad)
        assert torch.equal(r.value, expected.value)
        buffer = torch.full(z.shape, float("nan"), dtype=dtype)
        r = klgrad.logits_divergence(z, zr, backend=backend, grad=buffer, **kw)
        assert r.grad is buffer and torch.equal(buffer, expected.grad)


def test_negated_views_are_read_and_written_with_their_negation():
    """torch's lazy negation (tensor.is_neg()) is no property of the memory the kernels read
    and write: a negated input is materialised, a negated grad= gets the gradient copied in.
    Expected: the same call on plain tensors (.clone()), bit for bit."""
    z, zr = logits(rows=3, vocab=300, seed=9)
    expected = klgrad.logits_divergence(z, zr, backend="triton")
    r = klgrad.logits_divergence(torch._neg_view(-z), torch._neg_view(-zr), backend="triton")
    assert torch.equal(r.grad, expected.grad) and torch.equal(r.value, expected.value)
    target = torch._neg_view(torch.zeros_like(z))
    r = klgrad.logits_divergence(z, zr, backend="triton", grad=target)
    assert r.grad is target and torch.equal(target, expected.grad)


def test_the_gradient_buffer_is_checked():
    z, zr = logits(rows=2, vocab=50)
    with pytest.raises(klgrad.ShapeError, match=r"grad= has shape \(2, 49\) but logits="):
        klgrad.logits_divergence(z, zr, backend="triton", grad=torch.empty(2, 49))
    with pytest.raises(TypeError, match="grad= has dtype float64"):
        klgrad.logits_divergence(z, zr, backend="triton", grad=torch.empty(2, 50).double())
    with pytest.raises(ValueError, match="pass grad= or grad_in_place=True, not both"):
        klgrad.logits_divergence(z, zr, grad=torch.empty(2, 50), grad_in_place=True)
    with pytest.raises(ValueError, match="need gradient=True"):
        klgrad.logits_divergence(z, zr, gradient=False, grad_in_place=True)


def bad_rows():
    """(name, z, zr, kwargs) of calls the kernel refuses for a bad valid row."""
    z, zr = logits(rows=3, vocab=40, seed=9)
    nan, inf = z.clone(), zr.clone()
    nan[1, 7] = float("nan")
    inf[2, 3] = float("inf")
    empty, zero_ref = zr.clone(), zr.clone()
    empty[1] = -float("inf")
    zero_ref[0, 4] = -float("inf")
    return [("nan", nan, zr, {}), ("inf ref", z, inf, {"divergence": "forward-kl"}),
            ("all -inf ref", z, empty, {"divergence": "jensen-shannon"}),
            ("rkl = inf", z, zero_ref, {}),
            ("top-k nan", nan, zr, {"divergence": "reverse-kl-top-k", "top_k": 5}),
            ("tail rkl = inf", z, zero_ref, {"divergence": "reverse-kl-top-k-tail",
                                             "top_k": 40}),
            ("3-D", nan.view(1, 3, 40), zr.view(1, 3, 40), {}),
            ("masked 2-D", z, inf, {"mask": torch.ones(3, dtype=torch.bool)})]


@pytest.mark.parametrize("case", bad_rows(), ids=lambda c: c[0])
def test_bad_rows_raise_the_kernels_error(case):
    """The same exception type and message as the C++ kernel's (which names the argument,
    the row and its place in the batch, the column and the value)."""
    _, z, zr, kw = case
    errors = []
    for backend in ("kernel", "triton"):
        with pytest.raises(klgrad.InputError) as e:
            klgrad.logits_divergence(z, zr, backend=backend, **kw)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("kw", [dict(divergence="kl"), dict(divergence="forward-kl-top-k"),
                                dict(top_k=3), dict(divergence="jensen-shannon", lam=1.0),
                                dict(temperature=0.0), dict(mask=torch.ones(4))])
def test_bad_arguments_get_the_bindings_error(kw):
    """Arguments are checked by the binding on both backends: same type, same words."""
    z, zr = logits(rows=3, vocab=10)
    errors = []
    for backend in ("kernel", "triton"):
        with pytest.raises(Exception) as e:
            klgrad.logits_divergence(z, zr, backend=backend, **kw)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1]


def test_what_only_the_kernel_computes_is_refused_by_name():
    z, zr = logits(rows=2, vocab=10)
    with pytest.raises(TypeError, match="float64 runs on the C..? kernel"):
        klgrad.logits_divergence(z.double(), zr.double(), backend="triton")
    with pytest.raises(ValueError, match="log_probs=True runs on the C\\+\\+ kernel only"):
        klgrad.logits_divergence(z, zr, backend="triton", log_probs=True)
    with pytest.raises(TypeError, match="backend='triton' takes torch tensors"):
        klgrad.logits_divergence(z.numpy(), zr.numpy(), backend="triton")
    with pytest.raises(ValueError,
                       match="backend= must be \"auto\", \"kernel\" or \"triton\", got 'gpu'"):
        klgrad.logits_divergence(z, zr, backend="gpu")


def test_auto_is_the_kernel_on_cpu_tensors():
    """backend="auto" on CPU tensors runs the C++ kernel: float64 works (Triton refuses it)
    and the result equals backend="kernel" bit for bit."""
    z, zr = logits(rows=2, vocab=10)
    auto = klgrad.logits_divergence(z.double(), zr.double())
    ker = klgrad.logits_divergence(z.double(), zr.double(), backend="kernel")
    assert torch.equal(auto.grad, ker.grad)


def test_numpy_buffers_on_the_kernel_backend():
    """grad= and grad_in_place=True on numpy arrays (the kernel backend)."""
    z, zr = (t.numpy() for t in logits(rows=3, vocab=30))
    expected = klgrad.logits_divergence(z, zr).grad
    own = z.copy()
    assert klgrad.logits_divergence(own, zr, grad_in_place=True).grad is own
    assert np.array_equal(own, expected)
