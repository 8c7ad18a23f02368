"""klgrad.Spec and klgrad.evaluate on numpy arrays and torch CPU tensors: values and
coefficients against closed forms written here (k1, k3 and their derivatives, the
aggregation weights of docs/api.md), layouts and dtypes against each other, and every
refusal's exception type and message."""
import numpy as np
import pytest

import klgrad

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(7)


def batch(rows=3, cols=5, dtype=np.float64):
    lp = RNG.normal(-2.0, 0.7, (rows, cols)).astype(dtype)
    lr = (lp + RNG.normal(0.0, 0.3, (rows, cols))).astype(dtype)
    lb = (lp + RNG.normal(0.0, 0.2, (rows, cols))).astype(dtype)
    mask = RNG.random((rows, cols)) < 0.7
    mask[0, :] = True
    return lp, lr, lb, mask


def k3(lp, lr):
    return np.exp(lr - lp) - (lr - lp) - 1


def k3_derivative(lp, lr):  # d k3 / d lp
    return 1 - np.exp(lr - lp)


# ---- Spec -------------------------------------------------------------------------------

def test_spec_canonical_string_and_equality():
    s = klgrad.Spec("k3-as-loss,preset=verl")
    assert str(s) == "k3-as-loss,preset=verl"
    assert s == klgrad.parse_spec(str(s))
    assert s != klgrad.Spec("k3-as-loss")
    assert hash(s) == hash(klgrad.Spec(str(s)))
    assert s != "k3-as-loss,preset=verl"  # a Spec is not its string
    assert repr(s) == "klgrad.Spec('k3-as-loss,preset=verl')"
    assert klgrad.Spec("k1-in-reward,beta=0.04").beta == 0.04


def test_spec_error_is_a_value_error_with_the_cpp_message():
    with pytest.raises(klgrad.SpecError, match="k9") as e:
        klgrad.Spec("k9-as-loss")
    assert isinstance(e.value, ValueError)


def test_spec_pickles():
    import pickle
    s = klgrad.Spec("k3-as-loss,is=detached,beta=0.1")
    assert pickle.loads(pickle.dumps(s)) == s


def test_version_is_the_cpp_version():
    import pathlib
    import re
    header = pathlib.Path(__file__).parents[2] / "include" / "klgrad" / "version.hpp"
    expected = re.search(r'KLGRAD_VERSION_STRING "([^"]+)"', header.read_text()).group(1)
    assert klgrad.__version__ == expected


# ---- values against closed forms --------------------------------------------------------

@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_k3_as_loss_token_mean_closed_form(dtype, rtol):
    lp, lr, _, mask = batch(dtype=dtype)
    r = klgrad.evaluate("k3-as-loss,beta=0.5", lp, lr, mask=mask)
    n = mask.sum()
    lp64, lr64 = lp.astype(np.float64), lr.astype(np.float64)
    assert r.value.dtype == dtype and r.coef.dtype == dtype
    np.testing.assert_allclose(r.value, np.where(mask, k3(lp64, lr64), 0), rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(r.coef, np.where(mask, 0.5 * k3_derivative(lp64, lr64) / n, 0),
                               rtol=rtol, atol=1e-9)
    assert r.loss == pytest.approx(0.5 * np.where(mask, k3(lp64, lr64), 0).sum() / n, rel=rtol)
    assert r.tokens == n and r.sequences == 3 and r.guarded == 0 and r.dropped == 0
    assert r.kl == pytest.approx(np.where(mask, k3(lp64, lr64), 0).sum() / n, rel=rtol)


def test_seq_mean_token_mean_weights():
    lp, lr, _, mask = batch()
    r = klgrad.evaluate("k1-as-loss,agg=seq-mean-token-mean", lp, lr, mask=mask)
    n_b = mask.sum(axis=1, keepdims=True)
    expected = np.where(mask, 1.0 / (n_b * mask.shape[0]), 0)
    np.testing.assert_allclose(r.coef, expected, rtol=1e-14)
    s_b = np.where(mask, lp - lr, 0).sum(axis=1)
    assert r.kl_sequence == pytest.approx(s_b.mean(), rel=1e-13)


def test_is_detached_weights_by_the_ratio():
    lp, lr, lb, mask = batch()
    r = klgrad.evaluate("k3-as-loss,is=detached,agg=token-sum", lp, lr, behavior=lb, mask=mask)
    w = np.exp(lp - lb)
    np.testing.assert_allclose(r.coef, np.where(mask, w * k3_derivative(lp, lr), 0), rtol=1e-12)


# ---- layouts, dtypes, outputs -----------------------------------------------------------

def test_packed_equals_padded():
    lp, lr, _, _ = batch(3, 4)
    padded = klgrad.evaluate("k3-as-loss,agg=seq-mean-token-sum", lp, lr)
    offsets = np.array([0, 4, 8, 12], dtype=np.int32)
    packed = klgrad.evaluate("k3-as-loss,agg=seq-mean-token-sum", lp.ravel(), lr.ravel(),
                             offsets=offsets)
    np.testing.assert_array_equal(packed.coef, padded.coef.ravel())
    np.testing.assert_array_equal(packed.value, padded.value.ravel())
    assert packed.loss == padded.loss


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.int8, np.int16, np.int32,
                                        np.int64, np.uint64, np.float16, np.float32,
                                        np.float64])
def test_every_mask_dtype_gives_the_same_result(mask_dtype):
    lp, lr, _, mask = batch()
    expected = klgrad.evaluate("k3-as-loss", lp, lr, mask=mask)
    r = klgrad.evaluate("k3-as-loss", lp, lr, mask=mask.astype(mask_dtype))
    np.testing.assert_array_equal(r.coef, expected.coef)


def test_masked_nan_never_poisons():
    lp, lr, _, mask = batch()
    lp[~mask] = np.nan
    lr[~mask] = np.inf
    r = klgrad.evaluate("k3-as-loss", lp, lr, mask=mask)
    assert np.isfinite(r.coef).all() and np.isfinite(r.loss)


def test_outputs_written_into_caller_arrays():
    lp, lr, _, mask = batch()
    value, coef = np.empty_like(lp), np.empty_like(lp)
    r = klgrad.evaluate("k3-as-loss", lp, lr, mask=mask, value=value, coef=coef)
    assert r.value is value and r.coef is coef
    np.testing.assert_array_equal(coef, klgrad.evaluate("k3-as-loss", lp, lr, mask=mask).coef)


def test_strided_rows_read_in_place():
    big = RNG.normal(-1, 0.5, (3, 8))
    lp = big[:, :5]  # rows 8 apart, each contiguous
    lr = np.ascontiguousarray(lp) + 0.1
    r = klgrad.evaluate("k3-as-loss", lp, lr)
    np.testing.assert_array_equal(r.coef, klgrad.evaluate("k3-as-loss", lp.copy(), lr).coef)


def test_non_contiguous_rows_refused_naming_the_argument():
    lp, lr, _, _ = batch(3, 6)
    with pytest.raises(klgrad.ShapeError, match=r"ref= has shape \(3, 3\) with non-contiguous"):
        klgrad.evaluate("k3-as-loss", lp[:, ::2].copy(), lr[:, ::2])
    with pytest.raises(klgrad.ShapeError, match="logp= has shape"):
        klgrad.evaluate("k3-as-loss", lp.T, lr.T.copy())
    with pytest.raises(ValueError, match="coef= is read-only"):
        coef = np.empty_like(lp)
        coef.setflags(write=False)
        klgrad.evaluate("k3-as-loss", lp, lr, coef=coef)


# ---- torch -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_without_copies(dtype):
    lp, lr, _, mask = batch()
    tlp = torch.tensor(lp, dtype=dtype, requires_grad=True)
    tlr, tmask = torch.tensor(lr, dtype=dtype), torch.tensor(mask)
    r = klgrad.evaluate("k3-as-loss", tlp, tlr, mask=tmask)
    assert isinstance(r.value, torch.Tensor) and isinstance(r.coef, torch.Tensor)
    assert r.coef.dtype == dtype and r.coef.shape == tlp.shape
    expected = klgrad.evaluate("k3-as-loss", tlp.detach().numpy(), tlr.numpy(), mask=mask)
    np.testing.assert_array_equal(r.coef.numpy(), expected.coef)
    coef = torch.empty_like(tlr)
    r = klgrad.evaluate("k3-as-loss", tlp, tlr, mask=tmask, coef=coef)
    assert r.coef is coef
    np.testing.assert_array_equal(coef.numpy(), expected.coef)


def test_torch_refusals_name_device_and_dtype():
    lp = torch.zeros(2, 3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"logp= has dtype bfloat16.*float32 or"):
        klgrad.evaluate("k3-as-loss", lp, lp)
    with pytest.raises(TypeError, match="ref= has dtype float16"):
        klgrad.evaluate("k3-as-loss", torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16))
    with pytest.raises(TypeError, match="logp= is on device meta"):
        klgrad.evaluate("k3-as-loss", torch.zeros(2, 3, device="meta"), torch.zeros(2, 3),
                        backend="kernel")
    # backend="auto" sends a tensor off the CPU to the device path, which wants every tensor
    # where logp is (python/tests/test_device.py compares it with the kernel).
    with pytest.raises(TypeError, match="ref= is on device cpu but logp= is on device meta"):
        klgrad.evaluate("k3-as-loss", torch.zeros(2, 3, device="meta"), torch.zeros(2, 3))


# ---- errors ----------------------------------------------------------------------------

def test_dtype_mismatch_names_both_arguments():
    lp, lr, _, _ = batch()
    with pytest.raises(TypeError, match="ref= has dtype float32 but logp= has dtype float64"):
        klgrad.evaluate("k3-as-loss", lp, lr.astype(np.float32))
    with pytest.raises(TypeError, match="logp= has dtype int64"):
        klgrad.evaluate("k3-as-loss", lp.astype(np.int64), lr)
    with pytest.raises(TypeError, match=r"logp= must be an array \(a torch tensor, a numpy array or any DLPack producer\), got list"):
        klgrad.evaluate("k3-as-loss", [[0.0]], lr)


def test_shape_errors_are_value_errors():
    lp, lr, _, mask = batch()
    with pytest.raises(klgrad.ShapeError, match="logp is 3x5 but ref is 3x4") as e:
        klgrad.evaluate("k3-as-loss", lp, lr[:, :4])
    assert isinstance(e.value, ValueError)
    with pytest.raises(klgrad.ShapeError, match=r"mask= has shape \(15,\)"):
        klgrad.evaluate("k3-as-loss", lp, lr, mask=mask.ravel())
    with pytest.raises(klgrad.ShapeError, match="pass offsets= for a packed batch"):
        klgrad.evaluate("k3-as-loss", lp.ravel(), lr.ravel())
    with pytest.raises(klgrad.ShapeError, match="offsets end at 3"):
        klgrad.evaluate("k3-as-loss", lp.ravel(), lr.ravel(), offsets=np.array([0, 3]))
    with pytest.raises(klgrad.InputError, match="non-decreasing"):
        klgrad.evaluate("k3-as-loss", lp.ravel(), lr.ravel(), offsets=np.array([0, 9, 3, 15]))
    with pytest.raises(TypeError, match="offsets= has dtype float64"):
        klgrad.evaluate("k3-as-loss", lp.ravel(), lr.ravel(), offsets=np.array([0.0, 15.0]))


def test_nonfinite_raises_a_floating_point_error_in_python_words():
    lp, lr, _, _ = batch()
    lp[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match=r'logp at sequence 1, position 2.*nonfinite="propagate"') as e:
        klgrad.evaluate("k3-as-loss", lp, lr)
    assert isinstance(e.value, klgrad.NonFiniteError) and isinstance(e.value, ValueError)
    assert "nonfinite_policy" not in str(e.value)
    r = klgrad.evaluate("k3-as-loss", lp, lr, nonfinite="propagate")
    assert np.isnan(r.value[1, 2])
    with pytest.raises(ValueError, match='nonfinite= must be "raise" or "propagate"'):
        klgrad.evaluate("k3-as-loss", lp, lr, nonfinite="ignore")


def test_missing_behavior_names_the_python_argument():
    lp, lr, _, _ = batch()
    with pytest.raises(klgrad.InputError, match="pass behavior=") as e:
        klgrad.evaluate("k3-as-loss,is=detached", lp, lr)
    assert "with_behavior" not in str(e.value)


def test_bad_counts_refused():
    lp, lr, _, _ = batch()
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="tokens= must be a positive int"):
            klgrad.evaluate("k3-as-loss", lp, lr, tokens=bad)
    with pytest.raises(TypeError, match="spec= must be a klgrad.Spec"):
        klgrad.evaluate(3, lp, lr)
    # A global count below the local batch's own would scale every coefficient up: refused by
    # the library, in Python's words (the fields of its structured error).
    n = int(lp.size)
    with pytest.raises(klgrad.InputError,
                       match=rf"tokens=1 is below this batch's own count, {n}: .*None counts") as e:
        klgrad.evaluate("k3-as-loss", lp, lr, tokens=1)
    assert "batch_counts" not in str(e.value) and "-1" not in str(e.value)


def test_global_counts_scale_the_coefficients():
    lp, lr, _, _ = batch()
    local = klgrad.evaluate("k3-as-loss", lp, lr)
    shard = klgrad.evaluate("k3-as-loss", lp, lr, tokens=2 * lp.size)
    np.testing.assert_allclose(shard.coef, local.coef / 2, rtol=1e-15)
