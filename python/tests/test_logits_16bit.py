"""16-bit logits (torch.bfloat16, torch.float16, numpy.float16): the kernels read them in
place and widen them to float32, so every result equals the float32 call's on the widened
logits (t.float()) bit for bit; those are checked against torch autograd of the textbook
formulas in float64 (an independent implementation) to float32's accuracy. Errors name the
Python argument."""
import numpy as np
import pytest

import klgrad

torch = pytest.importorskip("torch")
import klgrad.torch as kt  # noqa: E402

RNG = np.random.default_rng(16)
DTYPES = [torch.bfloat16, torch.float16]
DIVERGENCES = ["reverse-kl", "forward-kl", "jensen-shannon"]


def logits16(dtype, rows=5, vocab=37, masked=True):
    """Logits rounded to dtype, every 7th vocabulary entry -inf (a masked entry)."""
    z = torch.tensor(RNG.normal(0, 2, (rows, vocab)), dtype=torch.float32)
    zr = z + torch.tensor(RNG.normal(0, 1, (rows, vocab)), dtype=torch.float32)
    if masked:
        z[:, 3::7] = -float("inf")
        zr[:, 3::7] = -float("inf")
    return z.to(dtype), zr.to(dtype)


def same_bits(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_16bit_divergence_equals_float32_on_widened(dtype, divergence):
    z, zr = logits16(dtype)
    mask = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    for tau in (1.0, 0.7):
        r16 = klgrad.logits_divergence(z, zr, divergence=divergence, temperature=tau, mask=mask)
        r32 = klgrad.logits_divergence(z.float(), zr.float(), divergence=divergence,
                                       temperature=tau, mask=mask)
        assert r16.value.dtype == torch.float32 and r16.grad.dtype == torch.float32
        assert same_bits(r16.value, r32.value) and same_bits(r16.grad, r32.grad)
        assert r16.loss == r32.loss and r16.rows == r32.rows == 4


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_numpy_float16_equals_float32(divergence):
    z, zr = (t.numpy() for t in logits16(torch.float16))
    r16 = klgrad.logits_divergence(z, zr, divergence=divergence)
    r32 = klgrad.logits_divergence(z.astype(np.float32), zr.astype(np.float32),
                                   divergence=divergence)
    assert r16.value.dtype == np.float32 and r16.grad.dtype == np.float32
    assert np.array_equal(r16.value, r32.value) and np.array_equal(r16.grad, r32.grad)
    g = klgrad.logits_divergence(z, zr, divergence=divergence, grad_dtype=np.float16).grad
    assert g.dtype == np.float16 and np.array_equal(g, r32.grad.astype(np.float16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_logits_loss_16bit_against_autograd(dtype, divergence):
    z, zr = logits16(dtype, masked=False)
    zt = z.clone().requires_grad_(True)
    loss, value = kt.logits_loss(zt, zr, divergence=divergence)
    loss.backward()
    assert loss.dtype == torch.float32 and value.dtype == torch.float32
    assert zt.grad.dtype == dtype  # autograd's gradient has the leaf's dtype
    # The float32 kernel on the widened logits, rounded to dtype: the same bits.
    r32 = klgrad.logits_divergence(z.float(), zr.float(), divergence=divergence)
    assert same_bits(value, r32.value)
    assert torch.equal(zt.grad, r32.grad.to(dtype))  # grad: of the mean over rows
    # Autograd of the textbook formula in float64 on the same (widened) values.
    z64 = z.double().requires_grad_(True)
    lp, lr = torch.log_softmax(z64, -1), torch.log_softmax(zr.double(), -1)
    if divergence == "reverse-kl":
        ref = (lp.exp() * (lp - lr)).sum(-1)
    elif divergence == "forward-kl":
        ref = (lr.exp() * (lr - lp)).sum(-1)
    else:
        m = torch.logsumexp(torch.stack([lr + np.log(0.5), lp + np.log(0.5)]), 0)
        ref = 0.5 * (lr.exp() * (lr - m)).sum(-1) + 0.5 * (lp.exp() * (lp - m)).sum(-1)
    ref.mean().backward()
    # float32 accumulation over 37 entries: a few float32 ulps of the largest term.
    assert torch.allclose(value.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(r32.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["forward-kl-top-k", "reverse-kl-top-k", "forward-kl-top-k-tail",
                                  "reverse-kl-top-k-tail"])
def test_16bit_top_k_equals_float32_on_widened(dtype, form):
    z, zr = logits16(dtype)
    r16 = klgrad.logits_divergence(z, zr, divergence=form, top_k=4, temperature=0.7)
    r32 = klgrad.logits_divergence(z.float(), zr.float(), divergence=form, top_k=4,
                                   temperature=0.7)
    assert torch.equal(r16.indices, r32.indices)
    assert same_bits(r16.value, r32.value) and same_bits(r16.grad, r32.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_dtype(dtype):
    z, zr = logits16(dtype)
    r = klgrad.logits_divergence(z, zr, grad_dtype=dtype)
    r32 = klgrad.logits_divergence(z.float(), zr.float())
    assert r.grad.dtype == dtype and torch.equal(r.grad, r32.grad.to(dtype))
    assert klgrad.logits_divergence(z, zr, grad_dtype=torch.float32).grad.dtype == torch.float32
    with pytest.raises(ValueError, match="grad_dtype=torch.float64"):
        klgrad.logits_divergence(z, zr, grad_dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_paths_16bit(dtype):
    z, _ = logits16(dtype, rows=4, vocab=29)
    ids = torch.tensor([0, 5, 3, 28])  # id 3 is a -inf logit: logp = -inf
    lp16 = klgrad.selective_log_softmax(z, ids, temperature=0.7)
    lp32 = klgrad.selective_log_softmax(z.float(), ids, temperature=0.7)
    assert lp16.dtype == torch.float32 and same_bits(lp16, lp32)
    assert lp16[2] == -float("inf")
    coef = torch.tensor([0.5, -1.0, 2.0, 0.25])
    g16 = klgrad.sampled_logits_gradient(z, ids, coef, temperature=0.7)
    g32 = klgrad.sampled_logits_gradient(z.float(), ids, coef, temperature=0.7)
    assert same_bits(g16, g32)
    # coef in the logits' dtype (exact here), and the gradient rounded to it on request.
    g = klgrad.sampled_logits_gradient(z, ids, coef.to(dtype), temperature=0.7, grad_dtype=dtype)
    assert g.dtype == dtype and torch.equal(g, g32.to(dtype))


def test_16bit_refusals_name_the_argument():
    z, zr = logits16(torch.bfloat16)
    bad = z.clone()
    bad[2, 11] = float("nan")
    with pytest.raises(klgrad.NonFiniteError, match=r"^logits row 2, column 11 is nan"):
        klgrad.logits_divergence(bad, zr)
    with pytest.raises(TypeError, match=r"ref_logits= has dtype float16 but logits= has "
                                        r"dtype bfloat16"):
        klgrad.logits_divergence(z, zr.to(torch.float16))
    with pytest.raises(TypeError, match=r"logits= has dtype int16; klgrad reads float16, "
                                        r"bfloat16, float32 or float64"):
        klgrad.logits_divergence(np.zeros((2, 3), np.int16), np.zeros((2, 3), np.int16))
