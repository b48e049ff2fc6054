"""Linear interpolation / weighted average of weights: θ = Σ w_i θ_i / Σ w_i.

Two models and weights (1 - t, t) give linear interpolation between them. This is also the
"model soup" of Wortsman et al. 2022 (merge_soup.py) when every weight is equal.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lmkit.errors import ConfigError


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                     normalize: bool = True) -> torch.Tensor:
    """Σ w_i x_i, divided by Σ w_i when `normalize` (weights None: all 1, so the plain mean)."""
    if not tensors:
        raise ConfigError("weighted_average needs at least one tensor")
    weights = [1.0] * len(tensors) if weights is None else [float(w) for w in weights]
    if len(weights) != len(tensors):
        raise ConfigError(f"{len(weights)} weights for {len(tensors)} models: give one weight per model")
    out = sum(w * x.float() for w, x in zip(weights, tensors))
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ConfigError(f"the weights {weights} sum to 0: a weighted average needs a nonzero sum")
        out = out / total
    return out


def lerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """(1 - t) v0 + t v1: t = 0 gives v0, t = 1 gives v1."""
    return (1 - t) * v0.float() + t * v1.float()
