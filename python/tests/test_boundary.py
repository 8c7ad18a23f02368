"""The boundary of issue 23: arrays by DLPack (torch, numpy, mixed, any DLPack producer,
16-bit logits natively), refusals naming the argument, 0-size batches, the typed Spec whose
enums come from the C++ tables, and exceptions chosen by the error's type. Expected values
come from the same call on plain float32/float64 numpy arrays (the path every other test
checks against oracles): what is tested here is that the crossing changes nothing."""
import enum

import numpy as np
import pytest
import torch

import klgrad


def _batch(dtype=np.float64, shape=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.0, 0.5, shape).astype(dtype)
    ref = (logp + rng.normal(0.0, 0.3, shape)).astype(dtype)
    mask = rng.random(shape) < 0.8
    return logp, ref, mask


def test_mixed_numpy_and_torch_inputs_equal_numpy_alone():
    logp, ref, mask = _batch()
    plain = klgrad.evaluate("k3-as-loss", logp, ref, mask=mask)
    mixed = klgrad.evaluate("k3-as-loss", logp, torch.from_numpy(ref), mask=torch.from_numpy(mask))
    assert isinstance(mixed.coef, np.ndarray)  # results follow logp's type
    np.testing.assert_array_equal(mixed.coef, plain.coef)
    as_torch = klgrad.evaluate("k3-as-loss", torch.from_numpy(logp), ref, mask=mask)
    assert isinstance(as_torch.coef, torch.Tensor)
    np.testing.assert_array_equal(as_torch.coef.numpy(), plain.coef)
    assert as_torch.loss == plain.loss


class _Producer:
    """A DLPack producer that is neither numpy nor torch."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_any_dlpack_producer_is_read():
    logp, ref, mask = _batch()
    plain = klgrad.evaluate("k2-as-loss", logp, ref, mask=mask)
    other = klgrad.evaluate("k2-as-loss", _Producer(logp), _Producer(ref), mask=mask,
                            value=np.empty_like(logp), coef=np.empty_like(logp))
    np.testing.assert_array_equal(other.coef, plain.coef)


def test_negated_views_cross_with_their_negation():
    """torch's lazy negation (tensor.is_neg(): the .imag of a conjugated complex tensor, or
    torch._neg_view) is not carried by DLPack, which exports the memory under it: inputs
    are materialised, a logits gradient target gets the gradient copied in, and an evaluate
    output is refused by name. The expected values are those of the same tensors made
    plain (.clone()); the contiguous views gave the un-negated values before."""
    logp, ref, mask = _batch()
    minus = -torch.from_numpy(logp)
    for negated in (torch._neg_view(minus),
                    torch.complex(torch.zeros_like(minus), minus).conj().imag):
        assert negated.is_neg()
        got = klgrad.evaluate("k3-as-loss", negated, ref, mask=mask)
        plain = klgrad.evaluate("k3-as-loss", negated.clone(), ref, mask=mask)
        torch.testing.assert_close(got.coef, plain.coef, rtol=0, atol=0)
    with pytest.raises(ValueError, match="coef= is a negated view"):
        klgrad.evaluate("k3-as-loss", logp, ref,
                        coef=torch._neg_view(torch.zeros(3, 5, dtype=torch.float64)))
    z = torch.randn(4, 9, dtype=torch.float64)
    zr = torch.randn(4, 9, dtype=torch.float64)
    expected = klgrad.logits_divergence(z, zr).grad
    negated_z = torch._neg_view(-z)
    torch.testing.assert_close(klgrad.logits_divergence(negated_z, zr).grad, expected,
                               rtol=0, atol=0)
    target = torch._neg_view(torch.zeros_like(z))
    r = klgrad.logits_divergence(z, zr, grad=target)
    torch.testing.assert_close(target, expected, rtol=0, atol=0)
    torch.testing.assert_close(r.grad, expected, rtol=0, atol=0)


def test_refusals_name_the_argument():
    logp, ref, mask = _batch()
    with pytest.raises(TypeError, match="ref="):
        klgrad.evaluate("k3-as-loss", logp, [1.0, 2.0])
    with pytest.raises(TypeError, match="ref= has dtype float32 but logp= has dtype float64"):
        klgrad.evaluate("k3-as-loss", logp, ref.astype(np.float32))
    with pytest.raises(klgrad.ShapeError, match="logp is 3x5 but ref is 3x2"):
        klgrad.evaluate("k3-as-loss", logp, ref[:, :2].copy())
    with pytest.raises(klgrad.ShapeError, match="ref= .*non-contiguous"):
        klgrad.evaluate("k3-as-loss", logp, np.asfortranarray(ref))
    with pytest.raises(TypeError, match="logp= is on device meta"):
        klgrad.evaluate("k3-as-loss", torch.empty(3, 5, dtype=torch.float64, device="meta"),
                        torch.from_numpy(ref), backend="kernel")
    with pytest.raises(TypeError, match="logp= has dtype int64"):
        klgrad.evaluate("k3-as-loss", np.zeros((3, 5), dtype=np.int64), ref)
    frozen = np.empty_like(logp)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="coef= is read-only"):
        klgrad.evaluate("k3-as-loss", logp, ref, coef=frozen)


def test_zero_size_batches_give_empty_outputs_and_zero_loss():
    for shape in ((0, 4), (3, 0), (0, 0)):
        for make in (np.zeros, lambda s, dtype: torch.zeros(s, dtype=getattr(torch, dtype))):
            logp = make(shape, dtype="float32")
            r = klgrad.evaluate("k3-as-loss,agg=seq-mean-token-mean", logp, logp)
            assert tuple(r.coef.shape) == shape and r.loss == 0.0 and r.tokens == 0


def test_ref_that_requires_grad_is_detached():
    logp, ref, _ = _batch()
    lp = torch.tensor(logp, requires_grad=True)
    rf = torch.tensor(ref, requires_grad=True)
    r = klgrad.evaluate("k1-as-loss", lp, rf)
    assert not r.coef.requires_grad and rf.grad is None


def test_bf16_logits_cross_natively_and_equal_the_widened_call():
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.normal(0, 2, (4, 33)), dtype=torch.bfloat16)
    zr = torch.tensor(rng.normal(0, 2, (4, 33)), dtype=torch.bfloat16)
    a = klgrad.logits_divergence(z, zr)
    b = klgrad.logits_divergence(z.float(), zr.float())
    torch.testing.assert_close(a.value, b.value, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_spec_is_typed_with_enums_from_the_cpp_tables():
    s = klgrad.Spec("k3~k2-as-loss,preset=verl,is=detached,level=token,beta=0.04")
    assert s.estimator is klgrad.Estimator.K3 and s.gradient_estimator is klgrad.Estimator.K2
    assert s.placement is klgrad.Placement.AS_LOSS and s.placement == "as-loss"
    assert s.weighting is klgrad.Weighting.DETACHED
    assert s.level is klgrad.Level.TOKEN and s.preset is klgrad.Preset.VERL
    assert isinstance(s.aggregation, klgrad.Aggregation) and s.beta == 0.04
    assert isinstance(s.clamp, str) and s.clamp != "none"  # verl's clamps
    assert klgrad.Spec("k1-in-reward").preset is None
    # Every enum member is a word the spec grammar accepts in its place.
    for e in klgrad.Estimator:
        assert klgrad.Spec(f"{e.value}-as-loss").estimator is e
    for p in klgrad.Placement:
        assert klgrad.Spec(f"k1-{p.value}").placement is p
    for a in klgrad.Aggregation:
        text = f"k3-as-loss,agg={a.value}" + (",agg-norm=4" if a.value.endswith("norm") else "")
        assert klgrad.Spec(text).aggregation is a
    assert issubclass(klgrad.Estimator, enum.Enum) and str(klgrad.Estimator.K3) == "k3"


def test_exceptions_by_type():
    logp, ref, mask = _batch()
    logp[1, 2] = np.nan
    mask[1, 2] = True
    with pytest.raises(klgrad.NonFiniteError, match="logp"):
        klgrad.evaluate("k3-as-loss", logp, ref, mask=mask)
    with pytest.raises(klgrad.NonFiniteError, match="temperature"):
        klgrad.logits_divergence(np.zeros((2, 3)), np.zeros((2, 3)), temperature=float("nan"))
    with pytest.raises(klgrad.InputError) as bad:
        klgrad.logits_divergence(np.zeros((2, 3)), np.zeros((2, 3)), temperature=-1.0)
    assert not isinstance(bad.value, klgrad.NonFiniteError)
    with pytest.raises(klgrad.SpecError):
        klgrad.Spec("k9-as-loss")
