"""Magnitude pruning (unstructured): zero the weights with the smallest |w|.

Layer-wise ("layer"): every target Linear loses the same fraction — k = round(s * n) of
its n weights, the k smallest |w| of that layer. Every layer ends at sparsity s.
Global ("global"): one threshold for all target weights together — the k = round(s * N)
smallest |w| among all N target weights. The overall sparsity is s, but each layer's
differs: layers with many small weights lose more (Han et al. 2015 prune per layer; global
magnitude pruning as in Frankle & Carbin's lottery-ticket work and torch's
`global_unstructured`).

`round` and exact-k selection (ties broken by position) follow
`torch.nn.utils.prune.l1_unstructured` / `global_unstructured`, which the tests use as the
oracle. Pruning is cumulative: weights already pruned (mask 0) are ranked below every live
weight, so raising the sparsity never revives one — what iterative pruning needs.

Unstructured zeros shrink a *compressed* file (sparse formats) but not dense matmul time:
a dense kernel multiplies the zeros too. Speed needs structure (N:M on sparse tensor cores,
or removing whole rows/heads).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lmkit.compress.masks import current_mask, find_targets, set_mask
from lmkit.errors import ConfigError

SCOPES = ("layer", "global")


def _check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ConfigError(f"sparsity={sparsity!r}: must be a fraction in [0, 1), e.g. 0.5 for 50% zeros")


def importance(linear: nn.Linear) -> torch.Tensor:
    """|w|, with already-pruned weights set to -1 so they stay pruned."""
    score = linear.weight.detach().abs().float()
    mask = current_mask(linear)
    if mask is not None:
        score = torch.where(mask.bool(), score, torch.full_like(score, -1.0))
    return score


def _keep_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """1 everywhere except the k lowest scores (exactly k zeros)."""
    mask = torch.ones(score.numel(), dtype=torch.float32, device=score.device)
    if k > 0:
        idx = torch.topk(score.reshape(-1), k, largest=False).indices
        mask[idx] = 0.0
    return mask.view_as(score)


@torch.no_grad()
def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    scope: str = "layer",
    targets: Iterable[str] | str | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the target Linears of `model` in place to `sparsity`; returns the masks."""
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r}: must be one of {SCOPES}")
    mods = find_targets(model, targets)
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, lin in mods.items():
            score = importance(lin)
            masks[name] = _keep_mask(score, round(sparsity * score.numel()))
    else:
        scores = {name: importance(lin) for name, lin in mods.items()}
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        all_mask = _keep_mask(flat, round(sparsity * flat.numel()))
        start = 0
        for name, s in scores.items():
            masks[name] = all_mask[start:start + s.numel()].view_as(s)
            start += s.numel()
    for name, lin in mods.items():
        set_mask(lin, masks[name])
    return masks
