"""N:M structured sparsity ("semi-structured"; 2:4 is NVIDIA Ampere's sparse tensor cores).

In every group of M consecutive weights along the *input* dimension of a Linear
(weight[o, g*M:(g+1)*M]), keep the N with the largest |w| and zero the other M - N.
2:4 therefore gives exactly 50% sparsity with a fixed pattern the hardware can skip:
the kept values plus 2-bit indices are stored, and a sparse tensor core multiplies only
those (up to 2x matmul throughput, Mishra et al. 2021). Unstructured 50% cannot do that.

Grouping along the input dimension is what the hardware needs (the reduction dimension of
x @ W^T); the input size must be a multiple of M. Weights already pruned by an earlier mask
rank lowest in their group.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lmkit.compress.magnitude import importance
from lmkit.compress.masks import find_targets, set_mask
from lmkit.errors import ConfigError


def nm_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """0/1 mask keeping the n largest scores in each group of m along the last dimension."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M sparsity needs integers 0 < N < M, got {n}:{m}")
    if score.shape[-1] % m:
        raise ConfigError(
            f"N:M sparsity groups the input dimension in blocks of M={m}, but it has size "
            f"{score.shape[-1]} (not a multiple of {m}); leave this layer out of the targets"
        )
    groups = score.reshape(*score.shape[:-1], score.shape[-1] // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.float32)
    mask.scatter_(-1, keep, 1.0)
    return mask.reshape(score.shape)


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"{text!r} is not an N:M pattern like 2:4") from None
    nm_mask(torch.zeros(1, m), n, m)  # validates
    return n, m


@torch.no_grad()
def prune_nm(
    model: nn.Module, n: int = 2, m: int = 4, targets: Iterable[str] | str | None = None
) -> dict[str, torch.Tensor]:
    """Apply N:M sparsity to every target Linear in place; returns the masks."""
    mods = find_targets(model, targets)
    masks = {name: nm_mask(importance(lin), n, m) for name, lin in mods.items()}  # validate all first
    for name, lin in mods.items():
        set_mask(lin, masks[name])
    return masks


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m input weights has at most n nonzeros."""
    if weight.shape[-1] % m:
        return False
    groups = weight.reshape(*weight.shape[:-1], weight.shape[-1] // m, m)
    return bool(((groups != 0).sum(-1) <= n).all())
