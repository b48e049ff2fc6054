"""Classifier-free guidance (Ho & Salimans 2022): one network, conditional and unconditional.

Training replaces the condition by a "null" condition with probability p, so the same network
learns both eps(x_t, c) and eps(x_t). Sampling extrapolates away from the unconditional
prediction: eps = eps_u + w (eps_c - eps_u); w = 1 is plain conditional sampling, w > 1 trades
diversity for fidelity to the condition. The formula is linear, so it applies unchanged to v-
or x_0-predictions.
"""

from __future__ import annotations

from typing import Callable

import torch


def drop_condition(labels: torch.Tensor, drop_prob: float, null_label: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """`labels` with each entry replaced by `null_label` with probability `drop_prob`."""
    if drop_prob <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < drop_prob
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def guided_prediction(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor | int,
                      labels: torch.Tensor, null_labels: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_u + scale (eps_c - eps_u), both from one batched call of `model(x, t, labels)`."""
    if scale == 1.0:
        return model(x, t, labels)
    t_both = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim else t
    both = model(torch.cat([x, x]), t_both, torch.cat([labels, null_labels]))
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)
