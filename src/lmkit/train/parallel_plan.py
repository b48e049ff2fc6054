"""Which process does what: a run's strategy or `parallel:` section as a DeviceMesh and a wrapped model.

The processes are laid out on a mesh with named dims ``("dp", "tp")``, ``("pp",)``, or with
pipeline stages ``("pp", "dp", "tp")`` (torchtitan's order: tp innermost, pp outermost):
rank = (pp_index * dp + dp_index) * tp + tp_index, so each tensor-parallel group is made of
neighbouring ranks (on GPUs: one node, where the links are fastest), data parallelism spans the
groups and the stages, whose point-to-point traffic is the smallest, are the farthest apart.

  strategy     what each process holds                     data each reads
  none         the whole model                              everything
  ddp          the whole model; grads all-reduced           its dp shard
  fsdp         1/dp of params, grads, optimizer state       its dp shard
  tp           1/tp of every block and of the vocabulary    the same as its tp group
  fsdp+tp      1/(dp*tp): TP inside the group, FSDP across  its dp shard
  pp           its stage's layers (1/pp of the blocks)      the same batch (the pipe splits it)
  pp+ddp       its stage, grads all-reduced over dp         its dp shard (the pipe splits it)
  pp+fsdp      1/dp of its stage                            its dp shard
  pp+tp        1/tp of its stage                            the same as its tp group
  pp+fsdp+tp   1/(dp*tp) of its stage                       its dp shard

Under pp x tp the LM head gathers the full logits (an all-gather over tp) so that the pipeline's
loss function sees plain tensors. The engines are torch's: DDP, `fully_shard`,
DTensor/tensor.parallel, pipelining (which drives DDP's and FSDP's gradient sync per micro-batch).
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
        """Some parameters are tp-sharded DTensors (any layout with tp > 1)."""
        return self.strategy in ("tp", "fsdp+tp", "pp+tp", "pp+fsdp+tp")

    @property
    def pipeline(self) -> bool:
        """Each process holds one pipeline stage (steps run through a Pipeline's schedule)."""
        return self.strategy.startswith("pp")

    @property
    def pp_group(self):
        """The group of this process's pipeline: one rank per stage, same dp and tp index."""
        return self.mesh["pp"].get_group() if self.pipeline else None


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
    if par.tp > 1 and par.dp > 1 and not par.fsdp:
        raise ConfigError("parallel: dp > 1 with tp > 1 needs fsdp: true (DDP cannot average DTensor "
                          "gradients); set fsdp: true")
    if par.pp > 1:
        if par.dp == 1 and par.tp == 1:
            return Layout("pp", par, _mesh(info, (world,), ("pp",)))
        mesh = _mesh(info, (par.pp, par.dp, par.tp), ("pp", "dp", "tp"))
        inner = "+".join(([("fsdp" if par.fsdp else "ddp")] if par.dp > 1 else []) + (["tp"] if par.tp > 1 else []))
        return Layout(f"pp+{inner}", par, mesh, data_rank=mesh["dp"].get_local_rank(), data_world=par.dp)
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
    if layout.pipeline:
        return _pipeline(model, layout, info, loss_fn)
    from lmkit.train.tensor_parallel import apply_tensor_parallel

    apply_tensor_parallel(model, layout.mesh["tp"], sequence_parallel=par.sequence_parallel)
    if layout.strategy == "tp":
        return model, None
    _fully_shard(model, layout.mesh["dp"])
    return model, None


def _fully_shard(model: nn.Module, dp_mesh) -> None:
    """FSDP over `dp_mesh`: each block, then the rest (a whole model or a pipeline stage)."""
    from torch.distributed.fsdp import fully_shard

    from lmkit.train.distributed import _block_modules

    # a per-head q/k norm sees only its rank's heads: after FSDP's reduce-scatter over dp its
    # gradient shard is still summed over tp (the hooks TP put on the plain parameters are gone)
    model._lmkit_tp_partial = [name for name, _ in model.named_parameters()  # type: ignore[attr-defined]
                               if ".q_norm." in name or ".k_norm." in name]
    layers = getattr(model, "layers", None)
    blocks = list(layers.values()) if isinstance(layers, nn.ModuleDict) else _block_modules(model)  # a stage's
    for block in blocks:
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


def _pipeline(model: nn.Module, layout: Layout, info, loss_fn) -> tuple[nn.Module, Any]:
    """pp, alone or with dp/tp inside each stage: TP-shard the whole model over the tp group
    (the LM head gathering its logits), cut out this rank's stage, wrap the stage in DDP or FSDP
    over the dp group, and hand it to torch's PipelineStage."""
    from lmkit.train.pipeline_parallel import Pipeline

    par = layout.parallel
    wrap = None
    if par.tp > 1:
        from lmkit.train.tensor_parallel import apply_tensor_parallel

        apply_tensor_parallel(model, layout.mesh["tp"], gather_logits=True)
    if par.dp > 1 and par.fsdp:
        def wrap(stage: nn.Module) -> nn.Module:
            _fully_shard(stage, layout.mesh["dp"])
            return stage
    elif par.dp > 1:  # DDP's reducer cannot follow the schedule's per-micro-batch backwards: torch's
        def wrap(stage: nn.Module) -> nn.Module:  # replicate (DDP on FSDP's machinery), which pipelining drives
            from torch.distributed._composable.replicate_with_fsdp import replicate

            replicate(stage, mesh=layout.mesh["dp"])
            return stage
    pipe = Pipeline(model, layout.pp_group, par.pp_microbatches or par.pp, par.pp_schedule,
                    loss_fn=loss_fn, device=info.device, wrap=wrap)
    return pipe.module, pipe


def sum_partial_grads(model: nn.Module, layout: Layout) -> None:
    """FSDP x TP: all-reduce over tp the gradients that each tp rank computed for its own
    heads only (per-head q/k norms); a no-op for every other layout."""
    names = set(getattr(model, "_lmkit_tp_partial", ()))
    if not names or layout.strategy not in ("fsdp+tp", "pp+fsdp+tp"):
        return
    group = layout.mesh["tp"].get_group()
    for name, param in model.named_parameters():
        if name in names and param.grad is not None:
            grad = param.grad
            dist.all_reduce(grad.to_local() if hasattr(grad, "to_local") else grad, group=group)


def gather_stage_states(state: dict[str, Any], group=None) -> dict[str, Any]:
    """Pipeline stages hold disjoint parameters: every rank of `group` (one per stage; default:
    all ranks) gets the union of their dicts."""
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, state, group=group)
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def gather_stage_optimizer_states(named: dict[str, Any], group=None) -> dict[str, Any]:
    """The name-keyed optimizer states of all pipeline stages as one (param groups merged by
    index), on every rank of `group` (one rank per stage; default: all ranks)."""
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, named, group=group)
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
