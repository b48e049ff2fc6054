"""`ViT`: a Vision Transformer image encoder (Dosovitskiy et al. 2020) built from lmkit's blocks.

pixels [B, C, H, W] -> patch_embed (a conv with kernel = stride = patch: one linear map per
non-overlapping patch) -> [class_token; patches] + embed_positions (learned) -> pre_norm
(CLIP only) -> N x TransformerBlock (pre-LN, bidirectional: every patch sees every patch)
-> hidden_states -> norm(h[CLS]) (or the norm of the mean patch) = pooled [B, d_model]

The blocks are lmkit's own `models/block.TransformerBlock` with a LayerNorm / plain-MLP /
biased-projection `ModelConfig` (`ViTConfig.block_config`), so attention, norms and the FFN
are shared with the language models (activation "quick_gelu" for OpenAI CLIP).

Parameter names: patch_embed.weight (+ .bias when patch_bias), class_token [d],
embed_positions.weight [n_patches + 1, d], pre_norm (when pre_norm), layers.{i}.attn_norm,
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
from lmkit.models.config import ACTIVATIONS, ModelConfig, dataclass_from_dict
from lmkit.models.init import init_normal_weights

POOLINGS = ("cls", "mean")


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    activation: str = "gelu"
    norm_eps: float = 1e-5
    pre_norm: bool = False  # a LayerNorm on the embeddings before the blocks (CLIP's "pre_layrnorm")
    patch_bias: bool = True  # CLIP's patch conv has no bias
    pooling: str = "cls"  # "cls": the class token; "mean": the mean of the patch tokens
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "num_channels", "d_model", "n_layers", "n_heads", "d_ff"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"ViTConfig.{name}={getattr(self, name)!r}: must be a positive integer")
        if self.image_size % self.patch_size:
            raise ConfigError(f"ViTConfig.patch_size={self.patch_size}: must divide image_size={self.image_size}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ViTConfig.activation={self.activation!r}: must be one of {ACTIVATIONS}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"ViTConfig.pooling={self.pooling!r}: must be one of {POOLINGS}")
        self.block_config()  # validates heads, dropout

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self) -> ModelConfig:
        """The `ModelConfig` of the Transformer blocks: pre-LN, plain MLP, biases everywhere."""
        return ModelConfig(
            arch="encoder", vocab_size=1, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            d_ff=self.d_ff, max_seq_len=self.n_patches + 1, norm="layernorm", norm_eps=self.norm_eps,
            norm_position="pre", activation=self.activation, gated_ffn=False, position="none",
            qkv_bias=True, o_bias=True, ffn_bias=True, dropout=self.dropout,
            initializer_range=self.initializer_range,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        return dataclass_from_dict(cls, d)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        block = config.block_config()
        d, p = config.d_model, config.patch_size
        self.patch_embed = nn.Conv2d(config.num_channels, d, kernel_size=p, stride=p, bias=config.patch_bias)
        self.class_token = nn.Parameter(torch.zeros(d))
        self.embed_positions = nn.Embedding(config.n_patches + 1, d)
        self.pre_norm = nn.LayerNorm(d, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(block, layer_idx=i) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        init_normal_weights(self, std)
        nn.init.normal_(self.patch_embed.weight, 0.0, std)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_token, 0.0, std)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 1 + n_patches, d] token embeddings with positions."""
        cfg = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, expected "
                             f"[batch, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}]")
        x = pixel_values.to(self.patch_embed.weight.dtype)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, n_patches, d], row-major patch order
        cls = self.class_token.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1)
        return x + self.embed_positions.weight[None]

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels -> (hidden states [B, 1 + n_patches, d] of the last block (before the final norm),
        pooled [B, d]: the final norm of the class token, or of the mean patch token)."""
        x = self.dropout(self.pre_norm(self.embed(pixel_values)))
        checkpointing = getattr(self, "gradient_checkpointing", False) and self.training
        h, _ = run_layers(self.layers, x, checkpointing=checkpointing)
        pooled = h[:, 0] if self.config.pooling == "cls" else h[:, 1:].mean(1)
        return h, self.norm(pooled)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] -> pooled image features [B, d_model]."""
        return self.encode(pixel_values)[1]
