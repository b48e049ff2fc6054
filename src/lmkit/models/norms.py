"""LayerNorm and RMSNorm.

RMSNorm (Zhang & Sennrich 2019; Llama, T5) drops LayerNorm's mean subtraction and bias:
y = x / sqrt(mean(x^2) + eps) * g. It is computed in fp32 whatever the input dtype, as in
the reference implementations, because the mean of squares overflows fp16.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
