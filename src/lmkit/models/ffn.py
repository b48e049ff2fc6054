"""Position-wise feed-forward network: ReLU/GELU MLP, or gated (SwiGLU, GeGLU).

Plain:  down(act(up(x)))                     (original Transformer, GPT-2, BERT, T5 v1.0)
Gated:  down(act(gate(x)) * up(x))           (Shazeer 2020; Llama's SwiGLU uses act = SiLU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig


def activation_fn(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    if name == "quick_gelu":  # x * sigmoid(1.702 x): OpenAI CLIP's cheap GELU approximation
        return lambda x: x * torch.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name!r}")


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        d_ff = d_ff or config.d_ff
        bias = config.ffn_bias
        self.gated = config.gated_ffn
        if self.gated:
            self.gate_proj = nn.Linear(config.d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(config.d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, config.d_model, bias=bias)
        self.act = activation_fn(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h = self.act(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = self.act(self.up_proj(x))
        return self.down_proj(self.dropout(h))
