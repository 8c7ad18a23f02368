"""kl_loss(process_group=...) on two real processes (torch.distributed, gloo over loopback):
each rank's coefficients equal the unsharded batch's for its rows, and the ranks' gradients
sum to the unsharded gradient. The oracle is the single-process call on the whole batch."""
import datetime
import os
import socket
import time

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

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


def shard(rank):
    return [slice(0, 2), slice(2, 6)][rank]  # unequal shards


def worker(rank, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        logp, ref, mask = whole_batch()
        rows = shard(rank)
        out = {}
        for spec in SPECS:
            lp = logp[rows].clone().requires_grad_(True)
            loss, _ = kt.kl_loss(spec, lp, ref[rows], mask=mask[rows], process_group=True)
            loss.backward()
            out[spec] = (lp.grad.clone(), loss.item())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_reproduce_the_unsharded_batch():
    manager = mp.Manager()
    results = manager.dict()
    context = mp.start_processes(worker, args=(free_port(), results), nprocs=WORLD,
                                 join=False, start_method="spawn")
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > 120:
            for p in context.processes:
                p.kill()
            pytest.fail("the two gloo ranks did not finish in 120 s")
    logp, ref, mask = whole_batch()
    for spec in SPECS:
        lp = logp.clone().requires_grad_(True)
        loss, _ = kt.kl_loss(spec, lp, ref, mask=mask)
        loss.backward()
        total = 0.0
        for rank in range(WORLD):
            grad, shard_loss = results[rank][spec]
            torch.testing.assert_close(grad, lp.grad[shard(rank)], rtol=1e-14, atol=0)
            total += shard_loss
        assert total == pytest.approx(loss.item(), rel=1e-13)
        coef = klgrad.evaluate(spec, logp, ref, mask=mask).coef
        torch.testing.assert_close(lp.grad, coef, rtol=0, atol=0)
