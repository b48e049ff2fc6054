"""`CLIPTextEncoder`: CLIP's text tower, a causal pre-LN Transformer pooled at the end-of-text token.

ids [B, T] -> embed_tokens + embed_positions (learned) -> N x TransformerBlock (causal mask:
token t sees tokens <= t; padding keys masked) -> norm -> hidden_states
           -> pooled = hidden_states[b, eos position of row b]

EOS position as in Hugging Face's CLIPTextTransformer: with eos_token_id == 2 (old CLIP
configs) the argmax of the ids (the end-of-text token has the largest id in OpenAI's
vocabulary); otherwise the first position holding eos_token_id.
The blocks are lmkit's `TransformerBlock`; the masks come from `models/masks.attention_bias`.

Parameter names: embed_tokens.weight, embed_positions.weight, layers.{i}.attn_norm,
layers.{i}.self_attn.{q,k,v,o}_proj, layers.{i}.mlp_norm, layers.{i}.mlp.{up,down}_proj, norm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.block import TransformerBlock, run_layers
from lmkit.models.config import ModelConfig, dataclass_from_dict
from lmkit.models.init import init_normal_weights
from lmkit.models.masks import attention_bias, real_tokens


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    max_seq_len: int = 77
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 2048
    activation: str = "quick_gelu"
    norm_eps: float = 1e-5
    eos_token_id: int = 2
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"CLIPTextConfig.eos_token_id={self.eos_token_id}: must be in [0, vocab_size)")
        self.block_config()  # validates sizes, heads, activation

    def block_config(self) -> ModelConfig:
        """The `ModelConfig` of the blocks: causal, pre-LN, plain MLP, biases everywhere."""
        return ModelConfig(
            arch="decoder", vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, d_ff=self.d_ff, max_seq_len=self.max_seq_len, norm="layernorm",
            norm_eps=self.norm_eps, norm_position="pre", activation=self.activation, gated_ffn=False,
            position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, dropout=self.dropout,
            initializer_range=self.initializer_range,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPTextConfig":
        return dataclass_from_dict(cls, d)


class CLIPTextEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        block = config.block_config()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(config.max_seq_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(block, layer_idx=i) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        init_normal_weights(self, config.initializer_range)

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B] index of the token each row is pooled at (see the module docstring)."""
        ids = input_ids.to(torch.int)
        if self.config.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.config.eos_token_id).int().argmax(dim=-1)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] -> (hidden states [B, T, d] after the final norm, pooled [B, d])."""
        b, t = input_ids.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"text of {t} tokens is longer than max_seq_len={self.config.max_seq_len}; truncate it")
        device = input_ids.device
        pos = torch.arange(t, device=device)
        x = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(pos)[None])
        padding = real_tokens(attention_mask, b, t, device)
        bias = attention_bias(pos, pos, x.dtype, causal=True, padding=padding)
        checkpointing = getattr(self, "gradient_checkpointing", False) and self.training
        h, _ = run_layers(self.layers, x, checkpointing=checkpointing, attn_bias=bias, is_causal=bias is None)
        h = self.norm(h)
        return h, h[torch.arange(b, device=device), self.eos_positions(input_ids).to(device)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> pooled text features [B, d_model]."""
        return self.encode(input_ids, attention_mask)[1]
