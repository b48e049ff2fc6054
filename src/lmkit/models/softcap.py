"""Logit soft-capping (Gemma 2): c * tanh(x / c) keeps attention scores and output logits in
(-c, c) smoothly, so no single logit can grow without bound during training."""

from __future__ import annotations

import torch


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap
