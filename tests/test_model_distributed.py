"""Router-bias balancing under torch.distributed: counts are summed across data-parallel ranks."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nanoseek
from nanoseek.config import preset


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same weights on every rank
        model = nanoseek.DeepSeekV3(preset("tiny"))
        E = model.config.n_routed_experts
        n = len(model.routers())
        # rank 0 saw expert 0 overloaded, rank 1 expert 1; summed, experts 0 and 1 tie above the mean
        counts = torch.zeros(n, E)
        counts[:, rank] = 10.0
        counts[:, 2:] = 1.0
        model.update_router_biases(counts, gamma=0.5)
        out[rank] = torch.stack([r.e_score_correction_bias for r in model.routers()]).tolist()
    finally:
        dist.destroy_process_group()


def test_bias_update_uses_counts_summed_over_ranks(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    b0, b1 = torch.tensor(out[0]), torch.tensor(out[1])
    assert torch.equal(b0, b1)  # every rank applies the same update
    # summed counts: experts 0 and 1 have 11 each (> mean), the rest 2 (< mean): -gamma / +gamma.
    # Each rank alone would have raised one of experts 0/1 (count 1 < mean) instead.
    assert torch.all(b0[:, :2] == -0.5) and torch.all(b0[:, 2:] == 0.5)
