"""`BLIPText`: BLIP's BERT-like text Transformer, with cross-attention to image tokens.

ids [B, T] -> embed_tokens + embed_positions (learned) -> embed_norm -> N x TransformerBlock
(post-LN as BERT: x = Norm(x + SelfAttn(x)); x = Norm(x + CrossAttn(x, image)); x = Norm(x + FFN(x)))
-> hidden_states [B, T, d]

One stack plays three of BLIP's four parts, chosen per call:
  text encoder                 causal=False, image_states=None  (cross-attention skipped; ITC)
  image-grounded text encoder  causal=False, image_states given (ITM: [CLS] state -> itm_head)
  image-grounded text decoder  causal=True,  image_states given (captioning LM; with `lm_head`)
as in Hugging Face's `BlipTextModel`, whose layers always hold a cross-attention that the
unimodal call leaves unused. The blocks are lmkit's `models/block.TransformerBlock` (post-norm,
plain GELU MLP, biases everywhere); the only change is that the cross-attention keys and values
are read from image tokens of width `encoder_width` (the ViT's d_model), which may differ from
the text's d_model, so their projections are rebuilt with that input width.

Parameter names: embed_tokens.weight, embed_positions.weight, embed_norm, layers.{i}.self_attn.{q,k,v,o}_proj,
layers.{i}.attn_norm, layers.{i}.cross_attn.{q,k,v,o}_proj, layers.{i}.cross_attn_norm,
layers.{i}.mlp.{up,down}_proj, layers.{i}.mlp_norm; with a head: lm_head.{dense,norm,decoder,bias}
(lm_head.decoder.weight is embed_tokens.weight, tied as in BLIP).
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
from lmkit.models.encoder import MLMHead
from lmkit.models.init import init_normal_weights
from lmkit.models.masks import attention_bias, real_tokens


@dataclass
class BLIPTextConfig:
    vocab_size: int = 30524
    max_seq_len: int = 512
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 3072
    encoder_width: int = 768  # width of the image tokens the cross-attention reads
    activation: str = "gelu"
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    bos_token_id: int = 30522  # the [DEC] token a caption starts with
    sep_token_id: int = 102  # the token a caption ends with
    eos_token_id: int = 2
    label_smoothing: float = 0.0  # of the captioning loss (BLIP trains with 0.1)
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("pad_token_id", "bos_token_id", "sep_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"BLIPTextConfig.{name}={getattr(self, name)}: must be in [0, vocab_size)")
        if not isinstance(self.encoder_width, int) or self.encoder_width <= 0:
            raise ConfigError(f"BLIPTextConfig.encoder_width={self.encoder_width!r}: must be a positive integer")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"BLIPTextConfig.label_smoothing={self.label_smoothing}: must be in [0, 1)")
        self.block_config()  # validates sizes, heads, activation

    def block_config(self) -> ModelConfig:
        """The `ModelConfig` of the blocks: BERT's post-LN, plain MLP, biases everywhere."""
        return ModelConfig(
            arch="encoder", vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, d_ff=self.d_ff, max_seq_len=self.max_seq_len, norm="layernorm",
            norm_eps=self.norm_eps, norm_position="post", activation=self.activation, gated_ffn=False,
            position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, dropout=self.dropout,
            initializer_range=self.initializer_range, tie_embeddings=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BLIPTextConfig":
        return dataclass_from_dict(cls, d)


class BLIPText(nn.Module):
    def __init__(self, config: BLIPTextConfig, lm_head: bool = False) -> None:
        super().__init__()
        self.config = config
        block = config.block_config()
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_positions = nn.Embedding(config.max_seq_len, d)
        self.embed_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(block, cross_attention=True, layer_idx=i) for i in range(config.n_layers)
        )
        for layer in self.layers:  # keys/values come from image tokens of the ViT's width
            attn = layer.cross_attn
            attn.k_proj = nn.Linear(config.encoder_width, attn.n_kv_heads * attn.head_dim)
            attn.v_proj = nn.Linear(config.encoder_width, attn.n_kv_heads * attn.head_dim)
        self.lm_head = MLMHead(block) if lm_head else None
        init_normal_weights(self, config.initializer_range)
        if self.lm_head is not None:
            nn.init.zeros_(self.lm_head.bias)
            self.lm_head.decoder.weight = self.embed_tokens.weight

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        image_states: torch.Tensor | None = None, causal: bool = False,
    ) -> torch.Tensor:
        """ids [B, T] (+ image tokens [B, N, encoder_width] for the grounded modes) -> hidden [B, T, d]."""
        b, t = input_ids.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"text of {t} tokens is longer than max_seq_len={self.config.max_seq_len}; truncate it")
        if image_states is not None and image_states.shape[0] != b:
            raise ValueError(f"{image_states.shape[0]} images for {b} texts: the grounded modes pair them row by row")
        device = input_ids.device
        pos = torch.arange(t, device=device)
        x = self.dropout(self.embed_norm(self.embed_tokens(input_ids) + self.embed_positions(pos)[None]))
        padding = real_tokens(attention_mask, b, t, device)
        bias = attention_bias(pos, pos, x.dtype, causal=causal, padding=padding)
        checkpointing = getattr(self, "gradient_checkpointing", False) and self.training
        h, _ = run_layers(self.layers, x, checkpointing=checkpointing, attn_bias=bias,
                          is_causal=causal and bias is None, encoder_states=image_states)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, d] -> next-token scores [B, T, vocab] (the decoder's LM head)."""
        if self.lm_head is None:
            raise ValueError("this BLIPText has no lm_head (only the captioning decoder has one)")
        return self.lm_head(hidden)
