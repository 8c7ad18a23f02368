"""The full-vocabulary functions and explain(): values and gradients against PyTorch autograd
of the textbook formulas (an independent implementation) in float64, explain() against the
theory's documented verdicts (docs/explain.md) and the CLI's JSON when the CLI is built."""
import json
import os
import subprocess

import numpy as np
import pytest

import klgrad

torch = pytest.importorskip("torch")
import klgrad.torch as kt  # noqa: E402
from memory import peak_allocated  # noqa: E402

RNG = np.random.default_rng(11)


def logits(rows=6, vocab=9, dtype=np.float64):
    z = RNG.normal(0, 2, (rows, vocab)).astype(dtype)
    zr = (z + RNG.normal(0, 1, (rows, vocab))).astype(dtype)
    return z, zr


def reference_divergence(z, zr, divergence, lam=0.5, tau=1.0):
    lp, lr = torch.log_softmax(z / tau, -1), torch.log_softmax(zr / tau, -1)
    if divergence == "reverse-kl":
        return (lp.exp() * (lp - lr)).sum(-1)
    if divergence == "forward-kl":
        return (lr.exp() * (lr - lp)).sum(-1)
    m = torch.logsumexp(torch.stack([lr + np.log(lam), lp + np.log(1 - lam)]), 0)
    return lam * (lr.exp() * (lr - m)).sum(-1) + (1 - lam) * (lp.exp() * (lp - m)).sum(-1)


@pytest.mark.parametrize("divergence", ["reverse-kl", "forward-kl", "jensen-shannon"])
def test_logits_loss_matches_autograd(divergence):
    z, zr = logits()
    mask = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    zt = torch.tensor(z, requires_grad=True)
    loss, value = kt.logits_loss(zt, torch.tensor(zr), divergence=divergence,
                                 mask=torch.tensor(mask), temperature=0.7, lam=0.3)
    loss.backward()
    zx = torch.tensor(z, requires_grad=True)
    ref = reference_divergence(zx, torch.tensor(zr), divergence, 0.3, 0.7)
    expected = ref[torch.tensor(mask)].mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(zt.grad, zx.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(value[torch.tensor(mask)], ref.detach()[torch.tensor(mask)])
    assert value[2] == 0


def test_logits_divergence_numpy_padded_rows():
    z, zr = logits(6, 5)
    r = klgrad.logits_divergence(z.reshape(2, 3, 5), zr.reshape(2, 3, 5))
    assert r.value.shape == (2, 3) and r.grad.shape == (2, 3, 5)
    expected = reference_divergence(torch.tensor(z), torch.tensor(zr), "reverse-kl").numpy()
    np.testing.assert_allclose(r.value.ravel(), expected, rtol=1e-12)
    assert r.rows == 6 and r.sequences == 2
    assert klgrad.logits_divergence(z, zr, gradient=False).grad is None


def test_top_k_forward_kl_with_k_equal_v_is_forward_kl():
    z, zr = logits(4, 6)
    top = klgrad.logits_divergence(z, zr, divergence="forward-kl-top-k", top_k=6)
    full = klgrad.logits_divergence(z, zr, divergence="forward-kl")
    np.testing.assert_allclose(top.value, full.value, rtol=1e-12)
    assert top.indices.shape == (4, 6)
    np.testing.assert_array_equal(top.indices[:, 0], zr.argmax(-1))


def top_k_reference(z, zr, divergence, k, tau=1.0):
    """The top-k forms as a trainer writes them in torch (K from the detached chooser, the
    gathered full-vocabulary log-probs; the tail bin as log(-expm1(logsumexp)) of them, as
    TRL's _add_tail_bucket does, without its clamp): per-row values and K."""
    reverse = divergence.startswith("reverse")
    chooser = (z if reverse else zr).detach()
    K = torch.topk(chooser, k, dim=-1).indices
    if not divergence.endswith("-tail"):  # the chooser renormalised over K, the other full
        a = torch.log_softmax((z if reverse else zr).gather(-1, K) / tau, -1)
        b = torch.log_softmax((zr if reverse else z) / tau, -1).gather(-1, K)
    else:
        def bins(x):
            top = torch.log_softmax(x / tau, -1).gather(-1, K)
            tail = torch.log(-torch.expm1(torch.logsumexp(top, -1, keepdim=True)))
            return torch.cat([top, tail], -1)
        a, b = (bins(z), bins(zr)) if reverse else (bins(zr), bins(z))
    return (a.exp() * (a - b)).sum(-1), K


@pytest.mark.parametrize("divergence", ["forward-kl-top-k", "reverse-kl-top-k",
                                        "forward-kl-top-k-tail", "reverse-kl-top-k-tail"])
def test_top_k_forms_match_autograd(divergence):
    z, zr = logits(6, 11)
    mask = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    zt = torch.tensor(z, requires_grad=True)
    loss, value = kt.logits_loss(zt, torch.tensor(zr), divergence=divergence,
                                 mask=torch.tensor(mask), temperature=0.8, top_k=3)
    loss.backward()
    zx = torch.tensor(z, requires_grad=True)
    ref, K = top_k_reference(zx, torch.tensor(zr), divergence, 3, 0.8)
    expected = ref[torch.tensor(mask)].mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(zt.grad, zx.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(value[torch.tensor(mask)], ref.detach()[torch.tensor(mask)])
    assert value[2] == 0
    r = klgrad.logits_divergence(z, zr, divergence=divergence, top_k=3, temperature=0.8,
                                 mask=mask)
    np.testing.assert_array_equal(r.indices[mask], K.numpy()[mask])
    assert (r.indices[2] == -1).all()


@pytest.mark.parametrize("divergence,full", [("reverse-kl-top-k", "reverse-kl"),
                                             ("forward-kl-top-k-tail", "forward-kl"),
                                             ("reverse-kl-top-k-tail", "reverse-kl")])
def test_top_k_forms_with_k_equal_v_are_the_full_divergence(divergence, full):
    z, zr = logits(4, 6)
    top = klgrad.logits_divergence(z, zr, divergence=divergence, top_k=6)
    whole = klgrad.logits_divergence(z, zr, divergence=full)
    np.testing.assert_allclose(top.value, whole.value, rtol=1e-12)
    np.testing.assert_allclose(top.grad, whole.grad, rtol=1e-12, atol=1e-15)
    if divergence.endswith("-tail"):  # k + 1 bins: at most the full divergence
        part = klgrad.logits_divergence(z, zr, divergence=divergence, top_k=2)
        assert (part.value <= whole.value).all()


FORMS = [("reverse-kl", None), ("forward-kl", None), ("jensen-shannon", None),
         ("forward-kl-top-k", 5), ("reverse-kl-top-k", 5), ("forward-kl-top-k-tail", 5),
         ("reverse-kl-top-k-tail", 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence,top_k", FORMS)
def test_gradient_in_place_writes_over_the_logits_with_no_copy(divergence, top_k, dtype):
    """grad_in_place=True on float32 / float64 CPU tensors: the C++ kernel writes the gradient
    over the logits themselves (B x T x V, a mask, temperature 0.7): the gradient a new array
    gets, bit for bit, the same values and indices, the logits' version counter moved as by
    an in-place op, and no N x V allocation (the peak stays under a tenth of the logits;
    the values and indices are 1% of them)."""
    z, zr = (torch.tensor(x, dtype=dtype).reshape(4, 64, 1000) for x in logits(256, 1000))
    mask = torch.tensor(RNG.random((4, 64)) > 0.2)
    kw = dict(divergence=divergence, top_k=top_k, temperature=0.7, lam=0.3, mask=mask)
    expected = klgrad.logits_divergence(z, zr, **kw)
    own = z.clone()
    version = own._version
    peak, r = peak_allocated(lambda: klgrad.logits_divergence(own, zr, grad_in_place=True,
                                                              **kw))
    assert r.grad is own and torch.equal(own, expected.grad)
    assert torch.equal(r.value, expected.value) and r.loss == expected.loss
    assert top_k is None or torch.equal(r.indices, expected.indices)
    assert own._version > version
    assert peak < own.numel() * own.element_size() / 10


def test_gradient_in_place_copies_where_the_logits_cannot_take_it():
    """16-bit logits cannot hold the kernel's float32 gradient, and logits whose rows are
    not contiguous are not the gradient's layout: a float32 gradient is made (an N x V
    allocation) and copied over them, the same gradient as asked for in their dtype."""
    z, zr = (torch.tensor(x, dtype=torch.bfloat16) for x in logits(64, 1000))
    expected = klgrad.logits_divergence(z, zr, grad_dtype=torch.bfloat16)
    own = z.clone()
    peak, r = peak_allocated(lambda: klgrad.logits_divergence(own, zr, grad_in_place=True))
    assert r.grad is own and torch.equal(own, expected.grad)
    assert peak >= own.numel() * 4
    wide, zr32 = torch.zeros(64, 1024), zr.float()
    own = wide[:, :1000]
    own.copy_(z)
    expected = klgrad.logits_divergence(own.contiguous(), zr32)
    r = klgrad.logits_divergence(own, zr32, grad_in_place=True)
    assert r.grad is own and torch.equal(own, expected.grad)
    assert torch.equal(wide[:, 1000:], torch.zeros(64, 24))


def test_a_gradient_overlapping_the_logits_is_refused():
    """grad= over part of the logits' memory, or over the reference's, is the kernel's
    InputError; over the logits exactly it is grad_in_place."""
    z, zr = logits(4, 10)
    buffer = np.zeros(41)
    buffer[:40] = z.ravel()
    with pytest.raises(klgrad.InputError,
                       match=r"^grad= overlaps the memory of logits= without being logits= "
                             r"itself \(8 bytes from the first entry of logits=, row stride "
                             r"10 against that of logits=, 10\): the gradient can be written "
                             r"over logits= in place \(grad_in_place=True\)"):
        klgrad.logits_divergence(buffer[:40].reshape(4, 10), zr,
                                 grad=buffer[1:].reshape(4, 10))
    with pytest.raises(klgrad.InputError,
                       match=r"^grad= overlaps the memory of ref_logits=: the kernels read "
                             r"ref_logits= after writing the gradient; pass a grad= apart "
                             r"from ref_logits=$"):
        klgrad.logits_divergence(z, zr, grad=zr)
    expected = klgrad.logits_divergence(z, zr).grad
    assert klgrad.logits_divergence(z, zr, grad=z).grad is z
    np.testing.assert_array_equal(z, expected)


@pytest.mark.parametrize("shape,mask_shape", [((0, 5), (0,)), ((0, 3, 5), (0, 3))])
def test_a_batch_with_no_row_and_a_mask(shape, mask_shape):
    """No row, with a mask of no entry: empty outputs and a zero loss (a 2-D batch of no row
    once made a 1 x 0 mask visit one row of nothing and crash the process)."""
    z = torch.zeros(shape)
    r = klgrad.logits_divergence(z, z, mask=torch.ones(mask_shape, dtype=torch.bool))
    assert r.value.shape == shape[:-1] and r.grad.shape == shape
    assert (r.loss, r.rows, r.sequences) == (0.0, 0, 0)


def test_selective_log_softmax_and_sampled_gradient_match_autograd():
    z, _ = logits(5, 7)
    ids = RNG.integers(0, 7, 5)
    coef = RNG.normal(0, 1, 5)
    zt = torch.tensor(z, requires_grad=True)
    lp = torch.log_softmax(zt / 1.3, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
    (lp * torch.tensor(coef)).sum().backward()
    np.testing.assert_allclose(klgrad.selective_log_softmax(z, ids, temperature=1.3),
                               lp.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(klgrad.sampled_logits_gradient(z, ids, coef, temperature=1.3),
                               zt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_logits_refusals():
    z, zr = logits()
    with pytest.raises(ValueError, match='divergence= "kl" is unknown'):
        klgrad.logits_divergence(z, zr, divergence="kl")
    with pytest.raises(ValueError, match="needs top_k="):
        klgrad.logits_divergence(z, zr, divergence="forward-kl-top-k")
    with pytest.raises(ValueError, match="needs top_k= \\(the number of the policy's"):
        klgrad.logits_divergence(z, zr, divergence="reverse-kl-top-k-tail")
    with pytest.raises(ValueError, match="top_k= applies only to the top-k divergences"):
        klgrad.logits_divergence(z, zr, top_k=2)
    with pytest.raises(klgrad.ShapeError, match="ref_logits= has shape"):
        klgrad.logits_divergence(z, zr[:, :4])
    with pytest.raises(TypeError, match="logits= has dtype int32"):
        kt.logits_loss(torch.tensor(z).int(), torch.tensor(zr).int())
    bad = z.copy()
    bad[3, 2] = np.nan
    with pytest.raises(klgrad.NonFiniteError, match="^logits "):
        klgrad.logits_divergence(bad, zr)
    with pytest.raises(klgrad.InputError, match="ids"):
        klgrad.selective_log_softmax(z, np.full(6, 99))
    coef = np.ones(6)
    coef[4] = np.inf
    with pytest.raises(klgrad.NonFiniteError, match="^coef row 4 is inf, not finite"):
        klgrad.sampled_logits_gradient(z, np.zeros(6, dtype=np.int64), coef)
    masked = np.ones(6, dtype=bool)
    masked[4] = False  # a masked row's coefficient is never read
    assert np.isfinite(klgrad.sampled_logits_gradient(z, np.zeros(6, dtype=np.int64), coef,
                                                      mask=masked)).all()


def test_explain_gives_the_documented_verdicts():
    v = klgrad.explain("k2-as-loss")
    assert v["spec"] == "k2-as-loss"
    assert set(v) == {"spec", "sentence", "on_policy", "off_policy"}
    assert v["on_policy"]["token"]["follows"] == "rkl"
    assert klgrad.explain(klgrad.Spec("k1-in-reward,level=to-go"))["on_policy"]["sequence"]["follows"] == "rkl"
    with pytest.raises(klgrad.SpecError):
        klgrad.explain("k3-as-los")


def test_explain_equals_the_cli_json():
    cli = os.environ.get("KLGRAD")
    if not cli or not os.path.exists(cli):
        pytest.skip("set KLGRAD to the klgrad program to compare with the CLI")
    for spec in ("k3-as-loss,is=detached", "k1-in-reward,level=to-go", "k3~k2-as-loss,preset=verl"):
        out = subprocess.run([cli, "explain", "--spec", spec], capture_output=True, text=True,
                             check=True).stdout
        assert klgrad.explain(spec) == json.loads(out)


POLICY = {"vocab": 2, "steps": 2,
          "logits": [[0.5, -0.3], [0.2, 0.1], [-0.4, 0.3]],
          "ref_logits": [[0.0, 0.0], [0.1, -0.2], [0.0, 0.4]],
          "behavior_logits": [[0.1, 0.2], [0.0, 0.0], [0.3, -0.1]]}


def test_audit_gives_the_theorys_verdicts():
    # docs/theory.md table 5: k1-in-reward as reward-to-go follows the whole grad KL_seq;
    # per-token k2-as-loss only its part 1 (rkl_token) when T >= 2.
    r = klgrad.audit(POLICY, "k1-in-reward,level=to-go")
    assert r["follows"] == "rkl" and r["relative_error"]["rkl"] <= 1e-9
    assert list(r)[:4] == ["spec", "sampling", "parameters", "expected_value"]
    assert r["parameters"] == 6
    assert klgrad.audit(POLICY, klgrad.Spec("k2-as-loss"))["follows"] == "rkl_token"
    mc = klgrad.audit(POLICY, "k3-as-loss,is=detached", sampling="behavior", mc=50, seed=3)
    assert mc["sampling"] == "behavior" and mc["mc"]["samples"] == 50 and mc["mc"]["seed"] == 3


def test_audit_refusals_name_the_argument():
    with pytest.raises(klgrad.InputError, match="policy: policy file has no 'ref_logits'"):
        klgrad.audit({"vocab": 2, "steps": 1, "logits": [[0.0, 1.0]]}, "k3-as-loss")
    with pytest.raises(ValueError, match='sampling= must be "policy" or "behavior"'):
        klgrad.audit(POLICY, "k3-as-loss", sampling="mu")
    with pytest.raises(ValueError, match="mc= must be None or at least 2"):
        klgrad.audit(POLICY, "k3-as-loss", mc=1)


def test_audit_equals_the_cli_json(tmp_path):
    cli = os.environ.get("KLGRAD")
    if not cli or not os.path.exists(cli):
        pytest.skip("set KLGRAD to the klgrad program to compare with the CLI")
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    out = subprocess.run([cli, "audit", "--policy", str(path), "--spec", "k3-as-loss,is=detached",
                          "--sampling", "behavior", "--mc", "20", "--seed", "4"],
                         capture_output=True, text=True, check=True).stdout
    got = klgrad.audit(str(path), "k3-as-loss,is=detached", sampling="behavior", mc=20, seed=4)
    # The same code, compiled with -march=native here (FMA): numbers agree to rounding.
    assert_same_json(got, json.loads(out))


def assert_same_json(a, b):
    assert type(a) is type(b) or {type(a), type(b)} == {int, float}
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_json(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_json(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    else:
        assert a == b
