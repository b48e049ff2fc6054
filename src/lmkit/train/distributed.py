"""Data-parallel training through `torch.distributed`, launched by torchrun.

    torchrun --nproc_per_node=N train.py        (or python -m torch.distributed.run ...)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed`
reads them and joins the process group: NCCL on GPUs, gloo on CPU. Without those variables
everything degrades to a single process (world size 1), so the same script runs both ways.

Strategies
  ddp   DistributedDataParallel: every rank holds the whole model; gradients are averaged
        with an all-reduce during backward (overlapped, bucketed). Memory per rank is the
        full 16 bytes/param of mixed-precision AdamW.
  fsdp  Fully Sharded Data Parallel (torch's `fully_shard`, "FSDP2"; ZeRO-3 in DeepSpeed's
        terms): parameters, gradients and optimizer state are sharded across ranks and
        gathered layer by layer for compute. Each transformer block (every child of a
        ``layers`` ModuleList) is its own shard unit, then the root.
        CPU limitations: it works with gloo on CPU for correctness testing, but gloo's
        all-gather/reduce-scatter are slow and there is no compute/communication overlap
        worth having; mixed precision policies (bf16 params) are not used on CPU. Use it on
        GPUs (NCCL) for real runs.
  tp, pp, fsdp+tp and the `parallel:` section: train/parallel_plan.py (tensor_parallel.py,
        pipeline_parallel.py) lay the processes out on a DeviceMesh.

Data sharding: rank r takes element r of every group of `world_size` consecutive batches
(`ShardedIterable`), so N ranks with grad_accum k see exactly the batches that one process
with grad_accum N*k sees at each step. Checkpointing and logging happen on rank 0 only;
metrics are all-reduced first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from lmkit.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use device='cpu'")
    return torch.device(device)


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    if device == "auto" and world > 1 and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        store = _attempt_store(world)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dist.get_backend(), dev)


def _attempt_store(world: int):
    """Under torchrun's elastic agent, its store seen through a prefix naming this attempt, or None.

    The agent lends the workers its rendezvous store and keeps it across restarts, so without a
    prefix a restarted worker can read the address its peer published in the failed attempt and
    fail to connect (pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT numbers the attempts.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    from datetime import timedelta

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"lmkit/attempt-{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def choose_strategy(strategy: str, info: DistInfo) -> str:
    """'auto' -> 'ddp' when several processes run, else 'none'."""
    if strategy == "auto":
        return "ddp" if info.is_distributed else "none"
    if strategy in ("ddp", "fsdp", "tp", "pp") and not info.is_distributed:
        return "none"  # one process: nothing to shard or average
    return strategy


def _block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: children of every ModuleList named `layers` (or `h`/`blocks`)."""
    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            blocks.extend(module)
    return blocks


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """Wrap for data parallelism; returns the model unchanged for strategy 'none'."""
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if strategy == "fsdp":
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
        except ImportError as exc:  # pragma: no cover - old torch
            raise ConfigError(
                "strategy='fsdp' needs torch.distributed.fsdp.fully_shard (torch >= 2.6)"
            ) from exc
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in _block_modules(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if strategy == "tp":
        from torch.distributed.device_mesh import init_device_mesh

        from lmkit.train.tensor_parallel import apply_tensor_parallel

        for tensor in model.state_dict().values():  # every rank must start from rank 0's weights
            dist.broadcast(tensor, src=0)
        return apply_tensor_parallel(model, init_device_mesh(info.device.type, (info.world_size,)))
    raise ConfigError(f"unknown strategy {strategy!r}; choose none, ddp, fsdp or tp")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class ShardedIterable:
    """Rank r of N takes batch r of each group of N; resumable if the source is.

    Every rank reads whole groups, so after each yielded batch the source sits at the same
    position on every rank and rank 0's `state_dict()` is valid for all of them.
    """

    def __init__(self, source: Iterable, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        self.source, self.rank, self.world_size = source, rank, world_size

    def __iter__(self) -> Iterator:
        it = iter(self.source)
        while True:
            group = []
            for _ in range(self.world_size):
                try:
                    group.append(next(it))
                except StopIteration:
                    return  # an incomplete group is dropped: all ranks must step together
            yield group[self.rank]

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


# ---- collectives that are no-ops in one process ------------------------------------------
def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor, group=None) -> torch.Tensor:
    """Sum a (float64 recommended) tensor over the ranks of `group` (default: all); returns a new tensor."""
    out = values.clone()
    if _initialized():
        if dist.get_backend() == "nccl" and out.device.type != "cuda":
            out = out.cuda()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.cpu() if values.device.type == "cpu" else out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size() if _initialized() else 1
    return all_reduce_sum(values) / world


def barrier() -> None:
    if _initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
