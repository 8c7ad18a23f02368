"""Runs a test's worker on real processes, one per rank: torch.distributed over gloo on
loopback, started with spawn (the tests that need it: test_distributed.py, test_shards.py).
run(worker) calls worker(rank) in each process inside an initialised process group and
returns the ranks' results in rank order; worker is a module-level function (spawn pickles
it by name) returning something picklable."""
import datetime
import os
import socket
import time

import pytest

TIMEOUT_S = 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, worker, world, port, results):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results[rank] = worker(rank)
    finally:
        dist.destroy_process_group()


def run(worker, world=2):
    """worker(rank)'s result for each rank, in rank order; fails the test when the ranks
    take longer than TIMEOUT_S (a rank that raises fails it with the rank's traceback)."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    context = mp.start_processes(_rank_main, args=(worker, world, _free_port(), results),
                                 nprocs=world, join=False, start_method="spawn")
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > TIMEOUT_S:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {world} gloo ranks did not finish in {TIMEOUT_S} s")
    return [results[r] for r in range(world)]
