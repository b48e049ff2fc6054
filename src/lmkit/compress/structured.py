"""Structured pruning that shrinks the architecture: remove FFN neurons ("结构修剪", and the
notes' "模型重构" — the pruned model is rebuilt smaller).

Unstructured and N:M pruning keep every matrix at its size and write zeros. Removing a whole
intermediate channel j of a feed-forward block — row j of up_proj (and gate_proj), column j of
down_proj — instead makes every matmul of the FFN smaller, so a plain dense model gets faster
and its checkpoint smaller, with no sparse kernel needed.

Channel importance (data-free, weight-based):  s_j = ||W_down[:, j]|| * (||W_up[j]|| + ||W_gate[j]||)
— a channel whose input and output weights are small contributes little. Every layer keeps the
same number of channels (ModelConfig has one d_ff), so `config.d_ff` becomes that number and the
model saves/loads as an ordinary checkpoint of the smaller width (intermediate_size in HF terms).
Fine-tune afterwards (`Trainer`) to recover quality, as with any pruning.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.ffn import FeedForward


def _rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None, device=lin.weight.device,
                    dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new


def _cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None, device=lin.weight.device,
                    dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def neuron_importance(ffn: FeedForward) -> torch.Tensor:
    """s_j for every intermediate channel of one FFN."""
    w_in = ffn.up_proj.weight.detach().float().norm(dim=1)
    if ffn.gated:
        w_in = w_in + ffn.gate_proj.weight.detach().float().norm(dim=1)
    return ffn.down_proj.weight.detach().float().norm(dim=0) * w_in


@torch.no_grad()
def prune_ffn_neurons(model: nn.Module, keep: int | float) -> dict[int, torch.Tensor]:
    """Keep `keep` channels (an int, or a fraction of d_ff) in every FFN of `model`, in place.

    Returns {layer index: kept channel indices}. `model.config.d_ff` is updated.
    """
    cfg = getattr(model, "config", None)
    layers = getattr(model, "layers", None)
    if cfg is None or layers is None:
        raise ConfigError(f"{type(model).__name__} has no .config/.layers: FFN neuron pruning needs a DecoderLM")
    ffns = [getattr(layer, "mlp", None) for layer in layers]
    if not all(isinstance(f, FeedForward) for f in ffns):
        kinds = sorted({type(f).__name__ for f in ffns})
        raise ConfigError(f"FFN neuron pruning needs plain/gated FeedForward blocks, found {kinds} (MoE is not supported)")
    d_ff = cfg.d_ff
    k = round(keep * d_ff) if isinstance(keep, float) else keep
    if not (isinstance(k, int) and 1 <= k <= d_ff):
        raise ConfigError(f"keep={keep!r}: must give between 1 and d_ff={d_ff} channels (an int, or a fraction in (0, 1])")
    kept = {}
    for i, ffn in enumerate(ffns):
        idx = torch.topk(neuron_importance(ffn), k).indices.sort().values
        if ffn.gated:
            ffn.gate_proj = _rows(ffn.gate_proj, idx)
        ffn.up_proj = _rows(ffn.up_proj, idx)
        ffn.down_proj = _cols(ffn.down_proj, idx)
        kept[i] = idx
    model.config = dataclasses.replace(cfg, d_ff=k)
    return kept
