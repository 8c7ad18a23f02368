"""kl_loss(process_group=...) on two real processes (torch.distributed, gloo over loopback),
for the C++ kernel and for the device path (backend="device" on CPU tensors: its counts are
all-reduced as tensors on logp's device): each rank's coefficients equal the unsharded
batch's for its rows, and the gradients of a shared policy's parameters, summed over the
ranks (what DistributedDataParallel's all-reduce does), equal the unsharded batch's. The
oracle is the kernel's single-process call on the whole batch."""
import functools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

import gloo_ranks  # noqa: E402
import klgrad  # noqa: E402
import klgrad.torch as kt  # noqa: E402

SPECS = ["k3-as-loss,agg=token-mean", "k3-as-loss,agg=seq-mean-token-mean,beta=0.1",
         "k1-in-reward,level=to-go,agg=token-mean"]
WORLD = 2


def whole_batch():
    g = torch.Generator().manual_seed(5)
    logp = -torch.rand(6, 9, generator=g, dtype=torch.float64) * 3
    ref = logp + 0.3 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.6
    mask[0] = False  # an empty sequence on rank 0: counted by neither
    mask[4, :2] = True
    return logp, ref, mask


VOCAB, FEATURES = 7, 5


def policy():
    """A small policy, identical on every rank (as DDP's broadcast makes it), and its inputs:
    features and sampled token ids for the whole batch."""
    g = torch.Generator().manual_seed(11)
    model = torch.nn.Linear(FEATURES, VOCAB).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(VOCAB, FEATURES, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(VOCAB, generator=g, dtype=torch.float64))
    x = torch.randn(6, 9, FEATURES, generator=g, dtype=torch.float64)
    ids = torch.randint(VOCAB, (6, 9), generator=g)
    return model, x, ids


def policy_logp(model, x, ids):
    return torch.log_softmax(model(x), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def parameter_gradients(spec, rows, ref, mask, process_group, backend="kernel"):
    model, x, ids = policy()
    lp = policy_logp(model, x[rows], ids[rows])
    loss, _ = kt.kl_loss(spec, lp, ref[rows], mask=mask[rows], process_group=process_group,
                         backend=backend)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def shard(rank):
    return [slice(0, 2), slice(2, 6)][rank]  # unequal shards


def worker(backend, rank):
    logp, ref, mask = whole_batch()
    rows = shard(rank)
    out = {}
    for spec in SPECS:
        lp = logp[rows].clone().requires_grad_(True)
        loss, _ = kt.kl_loss(spec, lp, ref[rows], mask=mask[rows], process_group=True,
                             backend=backend)
        loss.backward()
        out[spec] = (lp.grad.clone(), loss.item(),
                     parameter_gradients(spec, rows, ref, mask, True, backend))
    return out


# The kernel's shards reproduce its unsharded coefficients bit for bit; the device path's
# to-go sums add in another order (log-step scans), so its coefficients match to rounding.
EXACTNESS = {"kernel": 1e-14, "device": 1e-12}


@pytest.mark.parametrize("backend", ["kernel", "device"])
def test_shards_reproduce_the_unsharded_batch(backend):
    results = gloo_ranks.run(functools.partial(worker, backend), WORLD)
    logp, ref, mask = whole_batch()
    for spec in SPECS:
        lp = logp.clone().requires_grad_(True)
        loss, _ = kt.kl_loss(spec, lp, ref, mask=mask)
        loss.backward()
        total = 0.0
        for rank in range(WORLD):
            grad, shard_loss, _ = results[rank][spec]
            torch.testing.assert_close(grad, lp.grad[shard(rank)], rtol=EXACTNESS[backend],
                                       atol=EXACTNESS[backend] * lp.grad.abs().max().item())
            total += shard_loss
        assert total == pytest.approx(loss.item(), rel=1e-13)
        coef = klgrad.evaluate(spec, logp, ref, mask=mask).coef
        torch.testing.assert_close(lp.grad, coef, rtol=0, atol=0)
        # The parameters' gradients: the ranks' sum (DDP's all-reduce) against one process on
        # the whole batch; they differ only in the order of double-precision sums.
        whole = parameter_gradients(spec, slice(None), ref, mask, process_group=None)
        for i, expected in enumerate(whole):
            summed = sum(results[rank][spec][2][i] for rank in range(WORLD))
            assert expected.abs().max() > 0
            torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-15)
