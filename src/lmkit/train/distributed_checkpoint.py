"""Checkpoints that outlive their layout, on torch.distributed.checkpoint (DCP).

Each rank writes only the shards it holds, with metadata naming every tensor's global shape,
so a run saved under one layout (TP=2, FSDP=4, one process) loads under another: DCP reads
whichever byte ranges the new layout needs. Optimizer state is keyed by parameter name, not by
position, so it follows the weights. Pipeline stages (alone or with tp / dp inside) keep the
whole model's parameter names, so each writes its own layers and the stages together make the
whole model (tests/test_pipeline_mesh.py loads a pp2 x tp2 save into one process). `export_hf` turns such a checkpoint into a plain Hugging
Face folder for `transformers` and every lmkit command.

Atomicity: the checkpoint is written into `<dir>.tmp` and renamed once every rank has
finished, so a crash leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from lmkit.errors import CheckpointError


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist_ready():
        import torch.distributed as dist

        dist.barrier()


def _rank() -> int:
    if _dist_ready():
        import torch.distributed as dist

        return dist.get_rank()
    return 0


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_distributed(directory: str | os.PathLike, model: nn.Module,
                     optimizer: torch.optim.Optimizer | None = None, step: int = 0) -> Path:
    """Write model (and optimizer) state from every rank into `directory`; call on all ranks."""
    import torch.distributed.checkpoint as dcp

    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state = _state(model, optimizer)
    state["step"] = torch.tensor(step)
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()
    return final


def load_distributed(directory: str | os.PathLike, model: nn.Module,
                     optimizer: torch.optim.Optimizer | None = None) -> int:
    """Load a checkpoint written by `save_distributed` under any layout into this one.

    `model` (and `optimizer`) must already be laid out as this run wants them (plain, TP, FSDP).
    Returns the saved step.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(directory)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a distributed checkpoint (no .metadata); was it saved by save_distributed?")
    state = _state(model, optimizer)
    state["step"] = torch.tensor(0)
    if optimizer is not None and not optimizer.state:
        _materialise_optimizer_state(optimizer)
        state["optim"] = _state(model, optimizer)["optim"]
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    return int(state["step"])


def _materialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """A fresh optimizer has no state tensors for DCP to load into: run one zero-gradient step
    with learning rate 0 (and no weight decay) so every state tensor exists, then reset it."""
    saved = [(g.get("lr"), g.get("weight_decay")) for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = 0.0, 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, (lr, wd) in zip(optimizer.param_groups, saved):
        group["lr"], group["weight_decay"] = lr, wd


def export_hf(directory: str | os.PathLike, config, out: str | os.PathLike, tokenizer=None) -> Path:
    """Write a plain Hugging Face checkpoint from a distributed one (in one process)."""
    from lmkit.hub import save_pretrained
    from lmkit.models.build import build_model

    model = build_model(config)
    load_distributed(directory, model)
    save_pretrained(model, out, tokenizer=tokenizer)
    return Path(out)
