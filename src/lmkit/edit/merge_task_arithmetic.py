"""Task arithmetic (Ilharco et al. 2023): edit a model by adding task vectors.

A task vector is what fine-tuning changed, τ_i = θ_i − θ_base. Adding several gives a model
that does several tasks (negating one makes it forget that task):

    θ = θ_base + λ Σ_i w_i τ_i          (w_i = 1 in the paper; λ is the scaling coefficient)
"""

from __future__ import annotations

from typing import Sequence

import torch

from lmkit.errors import ConfigError


def task_vector(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """τ = θ_tuned − θ_base (float32)."""
    if base.shape != tuned.shape:
        raise ConfigError(f"task vector of tensors with different shapes {tuple(base.shape)} and {tuple(tuned.shape)}")
    return tuned.float() - base.float()


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """One weight per model (None: all 1)."""
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} weights for {n} models: give one weight per model")
    return [float(w) for w in weights]


def task_arithmetic(base: torch.Tensor, tuned: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                    lam: float = 1.0) -> torch.Tensor:
    """θ_base + λ Σ w_i (θ_i − θ_base)."""
    weights = check_weights(weights, len(tuned))
    delta = sum(w * task_vector(base, t) for w, t in zip(weights, tuned))
    return base.float() + lam * delta
