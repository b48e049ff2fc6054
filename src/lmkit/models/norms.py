"""LayerNorm and RMSNorm.

RMSNorm (Zhang & Sennrich 2019; Llama, T5) drops LayerNorm's mean subtraction and bias:
y = x / sqrt(mean(x^2) + eps) * g. It is computed in fp32 whatever the input dtype, as in
the reference implementations, because the mean of squares overflows fp16.
Gemma's RMSNorm (`unit_offset`) stores w - 1 and scales by (1 + w), rounding to the input
dtype only after the scaling (Llama rounds first, then scales).
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps, config.norm_unit_offset)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
