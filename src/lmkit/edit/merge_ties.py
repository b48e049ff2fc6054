"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge.

Adding task vectors lets two kinds of interference shrink what each task learned: many small,
redundant changes, and changes of opposite sign. TIES removes both, per parameter p:

1. Trim: keep the top `density` fraction of each task vector τ_i by magnitude (per tensor,
   as mergekit and PEFT do; the paper's k = 20 % is density 0.2), zero the rest -> τ̂_i.
2. Elect: γ^p = sign(Σ_i w_i τ̂_i^p), the sign carrying the larger total mass (a sum of 0
   elects +, as mergekit and PEFT do).
3. Disjoint mean: average only the values that agree with γ (trimmed zeros never count),
   τ^p = Σ_{i∈A^p} w_i τ̂_i^p / Σ_{i∈A^p} w_i,  A^p = {i : sign(τ̂_i^p) = γ^p}.
   With w_i = 1 this is the paper's mean over A^p (mergekit's normalised weighting).
4. θ = θ_base + λ τ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lmkit.edit.merge_task_arithmetic import check_weights, task_vector
from lmkit.errors import ConfigError


def check_density(density: float) -> float:
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density={density!r}: the fraction of each task vector kept must be in (0, 1]")
    return float(density)


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """`delta` with all but its round(density · n) largest-magnitude entries set to 0."""
    density = check_density(density)
    n = delta.numel()
    k = int(round(density * n))
    if k >= n:
        return delta.clone()
    flat = delta.flatten()
    keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
    if k > 0:
        keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(delta)


def elect_sign(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σ_i w_i δ_i) over the stacked [n_models, ...] deltas, +1 where the sum is 0."""
    mass = (deltas * weights).sum(0)
    return torch.where(mass >= 0, 1.0, -1.0)


def disjoint_mean(deltas: torch.Tensor, weights: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the entries whose sign equals the elected `sign` (zeros never agree)."""
    agree = (torch.sign(deltas) == sign).float()
    total = (weights * agree).sum(0)
    return (deltas * weights * agree).sum(0) / torch.where(total == 0, torch.ones_like(total), total)


def _weights_column(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float32).view(-1, *([1] * (like.dim() - 1)))


def sign_consensus_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Steps 2 and 3 (elect, disjoint mean) over already sparsified task vectors (TIES, DARE-TIES)."""
    stacked = torch.stack([d.float() for d in deltas])
    w = _weights_column(check_weights(weights, len(deltas)), stacked)
    return disjoint_mean(stacked, w, elect_sign(stacked, w))


def ties(base: torch.Tensor, tuned: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
         density: float = 0.2, lam: float = 1.0) -> torch.Tensor:
    """θ_base + λ · disjoint_mean(elect(trim(θ_i − θ_base)))."""
    trimmed = [trim_by_magnitude(task_vector(base, t), density) for t in tuned]
    return base.float() + lam * sign_consensus_merge(trimmed, weights)
