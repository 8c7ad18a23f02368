"""Vocabulary-parallel shards (klgrad.shards): logits_divergence and logits_loss with
process_group= on two real processes (torch.distributed, gloo over loopback), each holding a
contiguous slice of the vocabulary (unequal: 15 and 22 of V = 37 columns). The oracle is the
unsharded C++ kernel call (klgrad.logits_divergence on the whole rows, in this process): each
rank's value, loss, mean and counts must equal it, and its gradient must equal the kernel
gradient's columns of its slice, for every full-vocabulary divergence, with temperature,
masks (NaN in masked rows), -inf entries (a row whose slice on one rank is all -inf), padded
B x T x V batches, log-probability rows, float32 and bfloat16, and the four top-k forms
(their K, chosen across the ranks, equal to the kernel's indices, ties included, and a K
holding -inf entries); and the refusals (a top_k beyond the whole vocabulary, a NaN in a
valid row on one rank, an RKL of +inf asked for its gradient, a bad lam) raised on every
rank, none left waiting."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

import gloo_ranks  # noqa: E402
import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402

WORLD, ROWS, VOCAB, SPLIT = 2, 6, 37, 15
F64 = dict(rtol=1e-12, atol=1e-15)  # float64: the shard path's sums differ from the kernel's
F32 = dict(rtol=2e-5, atol=2e-7)    # float32: both round to float32, each its own way


def columns(rank):
    return slice(0, SPLIT) if rank == 0 else slice(SPLIT, VOCAB)


def batch(dtype=torch.float64, shape=(ROWS, VOCAB), seed=3):
    """(logits, ref_logits, mask): masked rows hold NaN; row 1 has -inf entries on both
    ranks, row 2 is -inf on all of rank 0's slice (its probability lives on rank 1)."""
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    zr = z + torch.randn(shape, generator=g, dtype=torch.float64)
    flat_z, flat_r = z.view(-1, VOCAB), zr.view(-1, VOCAB)
    mask = torch.ones(flat_z.shape[0], dtype=torch.bool)
    mask[3] = False
    flat_z[3] = flat_r[3] = float("nan")
    flat_z[1, [2, 20]] = flat_r[1, [2, 20]] = -float("inf")  # both sides: no infinite RKL
    flat_z[2, :SPLIT] = flat_r[2, :SPLIT] = -float("inf")
    flat_z[5], flat_r[5] = flat_z[5].round(), flat_r[5].round()  # ties, across ranks too
    return z.to(dtype), zr.to(dtype), mask.reshape(shape[:-1])


# (name, divergence, keywords, dtype, shape)
CASES = [
    (f"{d}-{dtype}", d, dict(temperature=0.7, lam=0.3), dtype, (ROWS, VOCAB))
    for d in ("reverse-kl", "forward-kl", "jensen-shannon")
    for dtype in ("float64", "float32")
] + [
    ("padded-js", "jensen-shannon", dict(lam=0.9, temperature=2.0), "float64", (2, 3, VOCAB)),
    ("bf16-rkl", "reverse-kl", dict(), "bfloat16", (ROWS, VOCAB)),
    ("log-probs-fkl", "forward-kl", dict(log_probs=True), "float64", (ROWS, VOCAB)),
    ("no-mask-rkl", "reverse-kl", dict(mask=None), "float64", (ROWS, VOCAB)),
] + [
    (f"{d}-{k}", d, dict(top_k=k, temperature=0.7), "float64", (ROWS, VOCAB))
    for d in ("forward-kl-top-k", "reverse-kl-top-k", "forward-kl-top-k-tail",
              "reverse-kl-top-k-tail")
    for k in (5, 30)  # 30: more than row 2's 22 finite entries, so K holds -inf ones
] + [
    ("top-k-float32", "forward-kl-top-k-tail", dict(top_k=4), "float32", (ROWS, VOCAB)),
    ("top-k-padded", "reverse-kl-top-k", dict(top_k=3), "float64", (2, 3, VOCAB)),
]


def case_inputs(divergence, kw, dtype, shape):
    """(logits, ref_logits, mask) of a case; kw's mask=None: every row valid (the masked
    row's NaN replaced by finite logits)."""
    z, zr, mask = batch(getattr(torch, dtype), shape)
    if "mask" in kw:
        z.view(-1, VOCAB)[3], zr.view(-1, VOCAB)[3] = z.view(-1, VOCAB)[0], zr.view(-1, VOCAB)[4]
        mask = None
    if kw.get("log_probs"):
        valid = mask.reshape(-1)
        for x in (z, zr):  # normalise the valid rows (masked ones keep their NaN)
            x.view(-1, VOCAB)[valid] = torch.log_softmax(x.view(-1, VOCAB)[valid], -1)
    return z, zr, mask


def sharded(rank, divergence, kw, dtype, shape):
    z, zr, mask = case_inputs(divergence, kw, dtype, shape)
    s = columns(rank)
    options = dict(kw, mask=mask)
    r = klgrad.logits_divergence(z[..., s].contiguous(), zr[..., s].contiguous(),
                                 divergence=divergence, process_group=True, **options)
    return r.value, r.grad, r.loss, r.mean, r.rows, r.sequences, r.indices


def loss_gradient(rank):
    """logits_loss over the shard: (loss, value, the slice's gradient from backward)."""
    z, zr, mask = batch()
    s = columns(rank)
    logits = z[:, s].clone().requires_grad_(True)
    loss, value = kt.logits_loss(logits, zr[:, s], divergence="jensen-shannon", lam=0.4,
                                 mask=mask, temperature=0.8, process_group=True)
    (2.0 * loss).backward()
    return loss.detach(), value, logits.grad


FEATURES = 5
LINEAR_CASES = [("jensen-shannon", None), ("reverse-kl-top-k-tail", 4)]


def linear_inputs():
    """A head (hidden, weight, bias, leaves) and a teacher's (hidden, weight) over V, in
    float64, with the rows' mask."""
    g = torch.Generator().manual_seed(21)
    h, rh = (torch.randn(ROWS, FEATURES, generator=g, dtype=torch.float64) for _ in range(2))
    w, rw = (torch.randn(VOCAB, FEATURES, generator=g, dtype=torch.float64) for _ in range(2))
    b = torch.randn(VOCAB, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True, True])
    return h, w, b, rh, rw, mask


def linear_loss(divergence, top_k, columns_of=slice(None), process_group=None):
    """linear_logits_loss over the vocabulary columns given (the head's and the teacher's
    rows of the weight): (loss, value, grads of hidden, weight, bias)."""
    h, w, b, rh, rw, mask = linear_inputs()
    leaves = [x.clone().requires_grad_(True) for x in (h, w[columns_of], b[columns_of])]
    loss, value = kt.linear_logits_loss(leaves[0], leaves[1], (rh, rw[columns_of]),
                                        bias=leaves[2], divergence=divergence, top_k=top_k,
                                        temperature=0.9, mask=mask, chunk_rows=4,
                                        process_group=process_group)
    loss.backward()
    return (loss.detach(), value) + tuple(x.grad for x in leaves)


def refusal(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test compares the type and the message
        return type(e).__name__, str(e)
    return None


def refusals(rank):
    z, zr, mask = batch()
    s = columns(rank)
    zs, rs = z[:, s].contiguous(), zr[:, s].contiguous()
    nan_on_rank_1 = zs.clone()
    if rank == 1:
        nan_on_rank_1[0, 4] = float("nan")  # the vocabulary's column 19
    infinite_rkl = rs.clone()
    infinite_rkl[4, 0] = -float("inf")  # on both ranks: ref = 0 where pi > 0
    call = klgrad.logits_divergence
    return {
        "top-k": refusal(lambda: call(zs, rs, divergence="forward-kl-top-k", top_k=VOCAB + 1,
                                      mask=mask, process_group=True)),
        "nan": refusal(lambda: call(nan_on_rank_1, rs, mask=mask, process_group=True)),
        "infinite-rkl": refusal(lambda: call(zs, infinite_rkl, mask=mask, process_group=True)),
        "infinite-rkl-value": call(zs, infinite_rkl, mask=mask, gradient=False,
                                   process_group=True).value,
        "top-k-type": refusal(lambda: call(zs, rs, divergence="reverse-kl-top-k", top_k=2.5,
                                           process_group=True)),
        "lam": refusal(lambda: call(zs, rs, divergence="jensen-shannon", lam=0.0,
                                    process_group=True)),
        "after": call(zs, rs, mask=mask, process_group=True).loss,  # the group still works
    }


def worker(rank):
    out = {name: sharded(rank, d, kw, dtype, shape) for name, d, kw, dtype, shape in CASES}
    out["loss"] = loss_gradient(rank)
    out["linear"] = {d: linear_loss(d, k, columns(rank), process_group=True)
                     for d, k in LINEAR_CASES}
    out["refusals"] = refusals(rank)
    return out


@pytest.fixture(scope="module")
def ranks():
    """Each rank's results, from one run of the two gloo processes."""
    return gloo_ranks.run(worker, WORLD)


@pytest.mark.parametrize("name,divergence,kw,dtype,shape", CASES)
def test_every_rank_gets_the_unsharded_kernel_result(ranks, name, divergence, kw, dtype,
                                                     shape):
    z, zr, mask = case_inputs(divergence, kw, dtype, shape)
    whole = klgrad.logits_divergence(z, zr, divergence=divergence, **dict(kw, mask=mask))
    tolerance = F64 if dtype == "float64" else F32
    for rank in range(WORLD):
        value, grad, loss, mean, rows, sequences, indices = ranks[rank][name]
        torch.testing.assert_close(value, whole.value, **tolerance)
        torch.testing.assert_close(grad, whole.grad[..., columns(rank)], **tolerance)
        assert loss == pytest.approx(whole.loss, rel=tolerance["rtol"])
        assert mean == pytest.approx(whole.mean, rel=tolerance["rtol"])
        assert (rows, sequences) == (whole.rows, whole.sequences)
        assert (indices is None) == (whole.indices is None)
        if indices is not None:
            assert torch.equal(indices, whole.indices)
    assert whole.grad.reshape(-1, VOCAB)[2, :SPLIT].abs().max() == 0  # row 2: all -inf there
    assert not whole.value.isnan().any()


def test_logits_loss_backward_gives_each_rank_its_slice(ranks):
    z, zr, mask = batch()
    logits = z.clone().requires_grad_(True)
    loss, value = kt.logits_loss(logits, zr, divergence="jensen-shannon", lam=0.4, mask=mask,
                                 temperature=0.8)
    (2.0 * loss).backward()
    for rank in range(WORLD):
        shard_loss, shard_value, shard_grad = ranks[rank]["loss"]
        torch.testing.assert_close(shard_loss, loss.detach(), **F64)
        torch.testing.assert_close(shard_value, value, **F64)
        torch.testing.assert_close(shard_grad, logits.grad[:, columns(rank)], **F64)


@pytest.mark.parametrize("divergence,top_k", LINEAR_CASES)
def test_sharded_linear_form_equals_the_unsharded_one(ranks, divergence, top_k):
    """linear_logits_loss with each rank holding its rows of the head's and the teacher's
    weight: loss and value the unsharded call's, the weight's and bias's gradients its rows,
    the hidden states' gradient the whole (all-reduced). The unsharded call is itself checked
    against autograd of the composite in test_linear.py."""
    loss, value, d_hidden, d_weight, d_bias = linear_loss(divergence, top_k)
    for rank in range(WORLD):
        got = ranks[rank]["linear"][divergence]
        torch.testing.assert_close(got[0], loss, **F64)
        torch.testing.assert_close(got[1], value, **F64)
        torch.testing.assert_close(got[2], d_hidden, **F64)
        torch.testing.assert_close(got[3], d_weight[columns(rank)], **F64)
        torch.testing.assert_close(got[4], d_bias[columns(rank)], **F64)


def test_refusals_reach_every_rank(ranks):
    first, second = (ranks[r]["refusals"] for r in range(WORLD))
    for rank in range(WORLD):
        got = ranks[rank]["refusals"]
        assert got["top-k"] == ("ValueError", "top_k= must be an int in [1, V] = [1, 37], got "
                                "38 (V: the whole vocabulary, every rank's slice together)")
        assert got["infinite-rkl"][0] == "InputError"
        assert "ref_logits row 4 gives zero probability" in got["infinite-rkl"][1]
        assert got["infinite-rkl-value"][4] == float("inf")
        assert "needs 0 < lam < 1" in got["lam"][1]
        assert got["top-k-type"] == ("ValueError", "top_k= must be an int in [1, V] (V: the "
                                     "whole vocabulary, every rank's slice together), got 2.5")
    assert second["nan"] == ("NonFiniteError",
                             "logits row 0, column 19 (rank 1's column 4) is nan; logits must "
                             "be finite or -inf")
    assert first["nan"] == ("InputError", "rank 1 of the process group refused its shard of "
                            "the logits (its error names the argument); every rank stops")
    z, zr, mask = batch()
    assert first["after"] == pytest.approx(klgrad.logits_divergence(z, zr, mask=mask).loss,
                                           rel=1e-12)
