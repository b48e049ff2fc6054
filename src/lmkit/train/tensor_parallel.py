"""Tensor parallelism (Megatron-style) for lmkit decoders on PyTorch's DTensor.

Inside each block q/k/v and gate/up are split by output columns and o/down by input rows, so a
block needs one all-reduce after attention and one after the MLP (Shoeybi et al. 2019). The
embedding is split over the vocabulary (each rank looks up its slice, the partial rows are
summed) and so is the LM head; `loss_parallel()` then computes the cross-entropy on the
vocabulary shards without ever gathering the full logits. With `sequence_parallel` the norms and
the residual stream between blocks are split along the sequence instead of replicated, which
divides their activation memory by the TP degree (Korthikanti et al. 2022).

The engine is torch.distributed.tensor.parallel; this file only says which module gets which
style, and fixes the head counts each rank's attention sees.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from lmkit.errors import ConfigError


def check_tensor_parallel(config, tp: int) -> None:
    """Refuse shapes that cannot be split evenly over `tp` ranks, naming the field."""
    if tp < 1:
        raise ConfigError(f"tensor-parallel degree must be >= 1, got {tp}")
    for field in ("n_heads", "n_kv_heads", "vocab_size"):
        value = getattr(config, field)
        if value % tp:
            raise ConfigError(f"{field}={value} is not divisible by the tensor-parallel degree {tp}")
    d_ffs = {config.d_ff} | ({config.moe_d_ff} if getattr(config, "moe_d_ff", None) else set())
    for d_ff in d_ffs:
        if d_ff % tp:
            raise ConfigError(f"d_ff={d_ff} is not divisible by the tensor-parallel degree {tp}")
    if getattr(config, "qk_norm", None) == "full":
        raise ConfigError("qk_norm='full' (OLMo 2) normalises over all heads; tensor parallelism needs per-head norms")
    if getattr(config, "n_experts", 0):
        raise ConfigError("tensor parallelism of MoE experts is not supported; use expert-free layers or FSDP")
    if config.tie_embeddings:
        raise ConfigError("tensor parallelism needs untied embeddings (tie_embeddings=False)")


def block_plan(sequence_parallel: bool = False) -> dict:
    """The per-block plan: column-wise in, row-wise out."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1) if sequence_parallel else Replicate()),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1) if sequence_parallel else Replicate()),
        "mlp.gate_proj": ColwiseParallel(),
    }
    if sequence_parallel:
        gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan.update({"attn_norm": SequenceParallel(), "mlp_norm": SequenceParallel(),
                     "self_attn": gather, "mlp": gather})
    return plan


def apply_tensor_parallel(model: nn.Module, mesh, sequence_parallel: bool = False,
                          gather_logits: bool = False) -> nn.Module:
    """Shard `model` (a DecoderLM, every rank holding the same full weights) over the 1-D `mesh`.

    Returns the same module, its parameters now DTensors. For training the LM head leaves its
    logits sharded over the vocabulary: compute the loss inside `parallel_loss()`. For
    generation pass `gather_logits=True`: every rank then sees the full logits and picks the
    same token.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    tp = mesh.size()
    check_tensor_parallel(model.config, tp)
    top = {
        "embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1) if sequence_parallel else Replicate()),
        "lm_head": ColwiseParallel(input_layouts=Shard(1) if sequence_parallel else Replicate(),
                                   output_layouts=Replicate() if gather_logits else Shard(-1),
                                   use_local_output=gather_logits),
    }
    if sequence_parallel:
        top["norm"] = SequenceParallel()
    parallelize_module(model, mesh, top)
    plan = block_plan(sequence_parallel)
    for block in model.layers:
        own = {name: style for name, style in plan.items() if _has(block, name)}
        if sequence_parallel and not isinstance(block.mlp, nn.Module):  # pragma: no cover
            own.pop("mlp", None)
        parallelize_module(block, mesh, own)
        attn = block.self_attn
        attn.n_heads //= tp  # each rank computes its own slice of the heads
        attn.n_kv_heads //= tp
        if attn.qk_norm == "head":  # a per-head norm sees only this rank's heads: sum its gradient
            for param in (*attn.q_norm.parameters(), *attn.k_norm.parameters()):
                param.register_hook(functools.partial(_sum_over, group=mesh.get_group()))
    del PrepareModuleInput, SequenceParallel  # imported for the plan's types only
    return model


def _sum_over(grad: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad


def _has(module: nn.Module, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return isinstance(module, nn.Module)


@contextlib.contextmanager
def parallel_loss(enabled: bool = True):
    """Cross-entropy over vocabulary-sharded logits (torch's loss_parallel), or nothing."""
    if not enabled:
        yield
        return
    from torch.distributed.tensor.parallel import loss_parallel

    with loss_parallel():
        yield


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict (full tensors) from a tensor-parallel model, on every rank."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, value in model.state_dict().items():
        out[name] = value.full_tensor() if isinstance(value, DTensor) else value
    return out


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float, partial_over=None) -> torch.Tensor:
    """Clip by the global gradient norm when some gradients are DTensors and some plain.

    Under plain TP the parameters no plan touches (the norms) keep ordinary tensors; their
    gradients are equal on every rank because the column-parallel layers all-reduce the gradient
    of their input, so each counts once, as in the single-process norm. `partial_over`: a process
    group whose ranks hold disjoint parameters (pipeline stages); their squared norms are summed.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.zeros((), dtype=torch.float32)
    for g in grads:
        n = g.detach().float().norm(2)
        total += (n.full_tensor() if isinstance(n, DTensor) else n) ** 2
    if partial_over is not None:
        import torch.distributed as dist

        dist.all_reduce(total, group=partial_over)
    total = total.sqrt()
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total
