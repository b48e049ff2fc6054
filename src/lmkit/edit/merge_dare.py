"""DARE (Yu et al. 2023, "Language models are Super Mario"): drop and rescale task vectors.

Each entry of a task vector δ = θ_tuned − θ_base is dropped with probability p = 1 − density
and the survivors are rescaled by 1 / (1 − p), so the expectation of δ is unchanged:

    δ̃ = (m ⊙ δ) / (1 − p),   m_j ~ Bernoulli(1 − p)

The sparse δ̃ then go through an ordinary merge: DARE-linear is task arithmetic over them
(θ_base + λ Σ w_i δ̃_i), DARE-TIES is TIES' sign election and disjoint mean over them.
The masks come from a torch.Generator seeded by (seed, tensor name, model index), so a merge
is reproducible and does not depend on the order tensors are visited in.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

from lmkit.edit.merge_task_arithmetic import check_weights, task_vector
from lmkit.edit.merge_ties import check_density, sign_consensus_merge


def mask_generator(seed: int, name: str = "", index: int = 0) -> torch.Generator:
    """The generator of the drop mask of model `index`'s tensor `name` under `seed`."""
    key = zlib.crc32(f"{name}\0{index}".encode())
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + key) % (2**63 - 1))


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep each entry with probability `density` (drop with p = 1 − density), divide by density."""
    density = check_density(density)
    if density == 1.0:
        return delta.float().clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep.to(delta.device), delta.float() / density, torch.zeros((), device=delta.device))


def _sparse_deltas(base, tuned, density, seed, name):
    return [drop_and_rescale(task_vector(base, t), density, mask_generator(seed, name, i)) for i, t in enumerate(tuned)]


def dare_linear(base: torch.Tensor, tuned: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                density: float = 0.5, lam: float = 1.0, seed: int = 0, name: str = "") -> torch.Tensor:
    """θ_base + λ Σ w_i DARE(θ_i − θ_base)."""
    weights = check_weights(weights, len(tuned))
    deltas = _sparse_deltas(base, tuned, density, seed, name)
    return base.float() + lam * sum(w * d for w, d in zip(weights, deltas))


def dare_ties(base: torch.Tensor, tuned: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
              density: float = 0.5, lam: float = 1.0, seed: int = 0, name: str = "") -> torch.Tensor:
    """θ_base + λ · disjoint_mean(elect(DARE(θ_i − θ_base)))."""
    deltas = _sparse_deltas(base, tuned, density, seed, name)
    return base.float() + lam * sign_consensus_merge(deltas, weights)
