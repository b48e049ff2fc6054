"""Which process does what: a run's strategy or `parallel:` section as a DeviceMesh and a wrapped model.

The processes are laid out on a mesh with named dims ``("dp", "tp")`` (or ``("pp",)``):
rank = dp_index * tp + tp_index, so each tensor-parallel group is made of neighbouring ranks
(on GPUs: one node, where the links are fastest) and data parallelism spans the groups.

  strategy   what each process holds                     data each reads
  none       the whole model                              everything
  ddp        the whole model; grads all-reduced           its dp shard
  fsdp       1/dp of params, grads, optimizer state       its dp shard
  tp         1/tp of every block and of the vocabulary    the same as its tp group
  fsdp+tp    1/(dp*tp): TP inside the group, FSDP across  its dp shard
  pp         its stage's layers (1/pp of the blocks)      the same batch (the pipe splits it)

The engines are torch's: DDP, `fully_shard`, DTensor/tensor.parallel, pipelining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmkit.errors import ConfigError
from lmkit.train.config import ParallelConfig, TrainConfig


@dataclass
class Layout:
    """The resolved layout of this run, and this process's place in it."""

    strategy: str = "none"
    parallel: ParallelConfig | None = None
    mesh: Any = None  # DeviceMesh, or None (one process, ddp, fsdp: the default group)
    data_rank: int = 0
    data_world: int = 1

    @property
    def dp_group(self):
        """The group over which batches differ (None: the default group)."""
        if self.mesh is not None and "dp" in (self.mesh.mesh_dim_names or ()):
            return self.mesh["dp"].get_group()
        return None

    @property
    def tensor_parallel(self) -> bool:
        return self.strategy in ("tp", "fsdp+tp")


def resolve_layout(config: TrainConfig, info) -> Layout:
    """The layout for `config` on the processes torchrun started (`info`: a DistInfo)."""
    from lmkit.train.distributed import choose_strategy

    world = info.world_size
    if config.parallel is None:
        strategy = choose_strategy(config.strategy, info)
        par = ParallelConfig(pp=world) if strategy == "pp" else None
        data_world = world if strategy in ("ddp", "fsdp") else 1
        layout = Layout(strategy, par, data_rank=info.rank if data_world > 1 else 0, data_world=data_world)
        if strategy == "pp":
            layout.mesh = _mesh(info, (world,), ("pp",))
        return layout
    par = config.parallel.resolve(world)
    if world == 1:
        return Layout("none", par)
    if par.pp > 1:
        return Layout("pp", par, _mesh(info, (world,), ("pp",)))
    if par.tp > 1 and par.dp > 1 and not par.fsdp:
        raise ConfigError("parallel: dp > 1 with tp > 1 needs fsdp: true (DDP cannot average DTensor "
                          "gradients); set fsdp: true")
    mesh = _mesh(info, (par.dp, par.tp), ("dp", "tp"))
    strategy = ("fsdp+tp" if par.dp > 1 else "tp") if par.tp > 1 else ("fsdp" if par.fsdp else "ddp")
    dp_rank = mesh["dp"].get_local_rank()
    return Layout(strategy, par, mesh, data_rank=dp_rank, data_world=par.dp)


def _mesh(info, shape: tuple[int, ...], names: tuple[str, ...]):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(info.device.type, shape, mesh_dim_names=names)


def broadcast_weights(model: nn.Module) -> None:
    """Every rank starts from rank 0's weights (what DDP does in its constructor)."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def apply_layout(model: nn.Module, layout: Layout, info, loss_fn=None) -> tuple[nn.Module, Any]:
    """Wrap or shard `model` for `layout`. -> (the module to call and optimize, a Pipeline or None).

    For pp the module returned is this rank's stage (same parameter names as in `model`);
    its steps run through the Pipeline's schedule, with `loss_fn` (see `pipeline_loss`) on the last stage.
    """
    from lmkit.train.distributed import wrap_model

    par = layout.parallel
    if layout.strategy in ("none", "ddp", "fsdp") or (layout.strategy == "tp" and par is None):
        return wrap_model(model, info, layout.strategy), None
    broadcast_weights(model)
    if layout.strategy == "pp":
        from lmkit.train.pipeline_parallel import Pipeline

        pipe = Pipeline(model, layout.mesh["pp"].get_group(), par.pp_microbatches or par.pp, par.pp_schedule,
                        loss_fn=loss_fn, device=info.device)
        return pipe.module, pipe
    from lmkit.train.tensor_parallel import apply_tensor_parallel

    apply_tensor_parallel(model, layout.mesh["tp"], sequence_parallel=par.sequence_parallel)
    if layout.strategy == "tp":
        return model, None
    from torch.distributed.fsdp import fully_shard

    from lmkit.train.distributed import _block_modules

    # a per-head q/k norm sees only its rank's heads: after FSDP's reduce-scatter over dp its
    # gradient shard is still summed over tp (the hooks TP put on the plain parameters are gone)
    model._lmkit_tp_partial = [name for name, _ in model.named_parameters()  # type: ignore[attr-defined]
                               if ".q_norm." in name or ".k_norm." in name]
    dp_mesh = layout.mesh["dp"]
    for block in _block_modules(model):
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    return model, None


def sum_partial_grads(model: nn.Module, layout: Layout) -> None:
    """FSDP x TP: all-reduce over tp the gradients that each tp rank computed for its own
    heads only (per-head q/k norms); a no-op for every other layout."""
    names = set(getattr(model, "_lmkit_tp_partial", ()))
    if not names or layout.strategy != "fsdp+tp":
        return
    group = layout.mesh["tp"].get_group()
    for name, param in model.named_parameters():
        if name in names and param.grad is not None:
            grad = param.grad
            dist.all_reduce(grad.to_local() if hasattr(grad, "to_local") else grad, group=group)


def gather_stage_states(state: dict[str, Any]) -> dict[str, Any]:
    """Pipeline stages hold disjoint parameters: every rank gets the union of their dicts."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, state)
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def gather_stage_optimizer_states(named: dict[str, Any]) -> dict[str, Any]:
    """The name-keyed optimizer states of all pipeline stages as one (param groups merged by index)."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, named)
    state: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for part in parts:
        state.update(part["state"])
        for i, group in enumerate(part["param_groups"]):
            if i < len(groups):
                groups[i]["params"] = groups[i]["params"] + list(group["params"])
            else:
                groups.append({**group, "params": list(group["params"])})
    return {"state": state, "param_groups": groups}


def own_optimizer_state(named: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """The part of a whole model's name-keyed optimizer state that this stage's parameters hold."""
    return {
        "state": {k: v for k, v in named["state"].items() if k in own},
        "param_groups": [{**g, "params": [n for n in g["params"] if n in own]} for g in named["param_groups"]],
    }


def pipeline_loss(label_smoothing: float, shift: bool, denominator: list[float]):
    """The last stage's loss for one micro-batch: its summed token losses over the step's target
    count (``denominator[0]``, set before each step), so the micro-batches add up to the step's mean."""
    import torch.nn.functional as F

    from lmkit.train.losses import IGNORE_INDEX, cross_entropy

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if shift:  # shift the labels, not the logits: slicing the logits would copy the largest tensor
            labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        total = cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
        return total / denominator[0]

    return loss_fn
