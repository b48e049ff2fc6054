"""Penalties against catastrophic forgetting (灾难性遗忘) in continued pretraining.

Both pull the weights θ towards the weights θ* the run started from:

  L2-SP (Li et al. 2018)   λ/2 · Σ_i (θ_i − θ*_i)²         every weight equally
  EWC (Kirkpatrick 2017)   λ/2 · Σ_i F_i (θ_i − θ*_i)²     F = diagonal Fisher on the *old* data

EWC's F_i is the curvature of the old task's log-likelihood in direction i (the diagonal
of the Fisher information, a Laplace approximation of the old posterior): weights the old
data barely cares about may move freely, the ones it depends on are held. It is estimated
here as the *empirical* Fisher, the mean over single sequences of the squared gradient of
their loss (one backward per sequence; a batch gradient squared would underestimate F by
the batch size, as the cross terms average out).

A penalty is a Trainer option (``Trainer(..., penalty=...)``): it is added once per
optimizer step to the data loss, so its gradient does not depend on accumulation or on the
number of ranks. Only parameters that were trainable when the anchor was taken count.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
from torch import nn

from lmkit.errors import ConfigError


class AnchorPenalty:
    """λ/2 · Σ_i w_i (θ_i − θ*_i)² with θ* the weights of `model` now and w_i = `importance`
    (default 1: L2-SP). Call it with the model to get the penalty as a scalar tensor."""

    def __init__(self, model: nn.Module, weight: float, importance: dict[str, torch.Tensor] | None = None,
                 name: str = "l2sp") -> None:
        if not weight >= 0:
            raise ConfigError(f"penalty weight must be >= 0, got {weight!r}")
        self.weight = float(weight)
        self.name = name
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if importance is not None:
            missing = sorted(set(self.anchor) - set(importance))
            if missing:
                raise ConfigError(f"importance is missing parameters {missing[:3]}")
            importance = {n: importance[n].detach().to(self.anchor[n]) for n in self.anchor}
        self.importance = importance

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = None
        for n, p in model.named_parameters():
            ref = self.anchor.get(n)
            if ref is None or ref.shape != p.shape:
                continue
            sq = (p.float() - ref.to(p.device, torch.float32)) ** 2
            if self.importance is not None:
                sq = sq * self.importance[n].to(p.device, torch.float32)
            term = sq.sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.weight * total


def l2sp_penalty(model: nn.Module, weight: float) -> AnchorPenalty:
    """L2-SP: λ/2 ‖θ − θ*‖² towards the starting weights."""
    return AnchorPenalty(model, weight, name="l2sp")


def estimate_fisher(model: nn.Module, batches: Iterable[dict[str, Any]], n_samples: int = 64) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean of (∂ loss_seq / ∂θ)² over up to `n_samples`
    sequences (rows of the batches, which need ``input_ids`` and ``labels``)."""
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in itertools.islice(batches, n_samples):
            rows = batch["input_ids"].shape[0]
            for r in range(rows):
                if seen >= n_samples:
                    break
                one = {k: v[r:r + 1].to(device) for k, v in batch.items() if torch.is_tensor(v)}
                model.zero_grad(set_to_none=True)
                model(**one).loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        fisher[n] += p.grad.detach().float() ** 2
                seen += 1
            if seen >= n_samples:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise ConfigError("estimate_fisher got no sequences: the general data set is empty")
    return {n: f / seen for n, f in fisher.items()}


def ewc_penalty(model: nn.Module, batches: Iterable[dict[str, Any]], weight: float,
                n_samples: int = 64) -> AnchorPenalty:
    """EWC: λ/2 Σ F_i (θ_i − θ*_i)², F estimated on `batches` of the old (general) data."""
    return AnchorPenalty(model, weight, importance=estimate_fisher(model, batches, n_samples), name="ewc")
