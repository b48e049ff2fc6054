"""Multi-process tests: start N ranks on loopback in spawned processes and collect their results."""

from __future__ import annotations

import torch.multiprocessing as mp

from live_server import free_port


def spawn_ranks(worker, world: int, *args) -> dict:
    """Run worker(rank, world, port, queue, *args) in `world` spawned processes -> {rank: result}.

    Each worker puts (rank, result) on the queue; `port` is a free loopback port for the rendezvous."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(world, free_port(), queue, *args), nprocs=world)
    return dict(queue.get() for _ in range(world))
