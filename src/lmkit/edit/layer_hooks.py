"""Reading and patching activations inside a model with forward hooks (no change to its code).

The editing methods name their sites by lmkit's parameter names: `layers.{i}.mlp.down_proj` (the
MLP's output projection, whose input is the "key" and output the "value" of ROME's view of the
MLP as a key-value memory) and `layers.{i}` (the residual stream after block i).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from lmkit.errors import ConfigError


def down_proj(model: nn.Module, layer: int) -> nn.Linear:
    """`layers.{layer}.mlp.down_proj` of a dense decoder, with a clear error otherwise."""
    layers = getattr(model, "layers", None)
    if layers is None or not 0 <= layer < len(layers):
        n = len(layers) if layers is not None else 0
        raise ConfigError(f"layer {layer} does not exist: the model has {n} layers (0..{n - 1})")
    proj = getattr(layers[layer].mlp, "down_proj", None)
    if not isinstance(proj, nn.Linear):
        raise ConfigError(f"layers.{layer}.mlp has no dense down_proj (MoE or quantized layers cannot be edited)")
    return proj


def block(model: nn.Module, layer: int) -> nn.Module:
    down_proj(model, layer)  # validates the index
    return model.layers[layer]


@contextmanager
def record_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside: each forward call's first input to `module` is appended to the yielded list."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def patch_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside: `module`'s output (the hidden states, first item of a block's tuple) becomes fn(output)."""

    def hook(_m, _args, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def record_outputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside: each forward call's output hidden states are appended to the yielded list."""
    seen: list[torch.Tensor] = []
    with patch_output(module, lambda h: seen.append(h) or h):
        yield seen


def at_positions(h: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """h[i, positions[i]] for each row i -> [B, d]."""
    return h[torch.arange(len(positions), device=h.device), torch.tensor(positions, device=h.device)]


@contextmanager
def only_trainable(model: nn.Module, *params: torch.Tensor) -> Iterator[None]:
    """Inside: gradients flow only to `params` (the model's own flags are restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
