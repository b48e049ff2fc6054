"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Raw attention of one layer says where a position reads from, but the residual stream also
carries each token's own state forward. Rollout models both: each layer's head-averaged
attention A is mixed with the identity, Â = 0.5·A + 0.5·I, its rows renormalised to sum to 1,
and the layers are multiplied from the first upwards:  R = Â_L · ... · Â_2 · Â_1.
Row i of R is how much each input token contributes to position i at the top.
"""

from __future__ import annotations

import torch


def attention_rollout(
    attentions: list[torch.Tensor], residual: float = 0.5, head_fusion: str = "mean"
) -> torch.Tensor:
    """Per-layer attention [B, H, T, T] (or [H, T, T]) -> rollout [B, T, T] (or [T, T]).

    residual: weight of the identity (the paper's 0.5); head_fusion: mean, max or min over heads."""
    if not attentions:
        raise ValueError("attention_rollout needs at least one layer of attention weights")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual={residual}: must be in [0, 1]")
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion={head_fusion!r}: choose from {sorted(fuse)}")
    squeeze = attentions[0].dim() == 3
    result = None
    for layer in attentions:
        a = fuse[head_fusion]((layer[None] if squeeze else layer).float())  # [B, T, T]
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (1.0 - residual) * a + residual * eye
        a = a / a.sum(-1, keepdim=True).clamp(min=1e-12)
        result = a if result is None else a @ result
    return result[0] if squeeze else result
