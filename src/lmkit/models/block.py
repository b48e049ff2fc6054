"""One Transformer layer: self-attention, optional cross-attention, FFN (or MoE).

Pre-norm (GPT-2, Llama, T5):  x = x + Attn(Norm(x));  x = x + FFN(Norm(x))
Post-norm (BERT, Vaswani):    x = Norm(x + Attn(x));  x = Norm(x + FFN(x))
Sandwich (Gemma 2/3):         x = x + Norm'(Attn(Norm(x)))   (and the same for the FFN)
Sublayer-output (OLMo 2):     x = x + Norm'(Attn(x))
Parallel (GPT-NeoX, Pythia):  x = x + Attn(Norm(x)) + FFN(Norm'(x))   (pre-norm; both read the same x)
Pre-norm keeps an identity path from output to input, which is why deep stacks train
without warm-up tricks; post-norm normalises the residual stream itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmkit.models.attention import Attention
from lmkit.models.config import ModelConfig
from lmkit.models.ffn import FeedForward
from lmkit.models.norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, cross_attention: bool = False, layer_idx: int = 0) -> None:
        super().__init__()
        self.norm_position = config.norm_position
        self.parallel_residual = config.parallel_residual
        if config.norm_position != "sublayer_output":
            self.attn_norm = make_norm(config)
        if config.norm_position in ("sandwich", "sublayer_output"):
            self.attn_post_norm = make_norm(config)
            self.mlp_post_norm = make_norm(config)
        self.self_attn = Attention(config)
        if cross_attention:
            self.cross_attn_norm = make_norm(config)
            if config.norm_position in ("sandwich", "sublayer_output"):
                self.cross_attn_post_norm = make_norm(config)
            self.cross_attn = Attention(config, cross=True)
        if config.norm_position != "sublayer_output":
            self.mlp_norm = make_norm(config)
        self.is_moe = config.is_moe_layer(layer_idx)
        if self.is_moe:
            from lmkit.models.moe import MoE

            self.mlp = MoE(config)
        else:
            self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x, name: str, fn):
        """x plus sublayer `fn`, with the norms named `{name}_norm` / `{name}_post_norm`."""
        where = self.norm_position
        if where == "post":
            out, w = fn(x)
            return getattr(self, f"{name}_norm")(x + self.dropout(out)), w
        out, w = fn(x if where == "sublayer_output" else getattr(self, f"{name}_norm")(x))
        if where != "pre":
            out = getattr(self, f"{name}_post_norm")(out)
        return x + self.dropout(out), w

    def forward(
        self,
        x: torch.Tensor,
        *,
        attn_bias: torch.Tensor | None = None,
        rope=None,
        kv_cache=None,
        is_causal: bool = False,
        encoder_states: torch.Tensor | None = None,
        cross_bias: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """token_mask: bool [B, T], True = real token; an MoE FFN leaves padding out of its
        routing statistics and expert capacity (a dense FFN needs no mask)."""

        def attn(h):
            return self.self_attn(h, attn_bias=attn_bias, rope=rope, kv_cache=kv_cache, is_causal=is_causal,
                                  return_weights=return_weights)

        ffn = (lambda h: self.mlp(h, token_mask=token_mask)) if self.is_moe else self.mlp
        if self.parallel_residual:
            a, weights = attn(self.attn_norm(x))
            return x + self.dropout(a) + self.dropout(ffn(self.mlp_norm(x))), weights
        x, weights = self._residual(x, "attn", attn)
        if encoder_states is not None:
            x, _ = self._residual(
                x,
                "cross_attn",
                lambda h: self.cross_attn(h, attn_bias=cross_bias, kv_input=encoder_states),
            )
        x, _ = self._residual(x, "mlp", lambda h: (ffn(h), None))
        return x, weights


def run_layers(
    layers: nn.ModuleList, x: torch.Tensor, *, checkpointing: bool = False, kv_cache=None,
    return_weights: bool = False, per_layer: list[dict] | None = None, **kwargs,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x through every block in turn, with the same keyword arguments (masks, rope, ...) for
    each, plus `per_layer[i]` for layer i where they differ (Gemma's local and global layers:
    own mask and RoPE tables); layer i gets layer i of `kv_cache`. With `checkpointing`
    (training, no cache) each block is recomputed in the backward pass instead of storing its
    activations. -> (output, per-layer attention weights when return_weights)."""
    attentions = []
    for i, layer in enumerate(layers):
        kw = {**kwargs, **per_layer[i]} if per_layer is not None else kwargs
        if checkpointing:
            x, w = checkpoint(layer, x, use_reentrant=False, return_weights=return_weights, **kw)
        else:
            x, w = layer(x, kv_cache=kv_cache.layer(i) if kv_cache is not None else None,
                         return_weights=return_weights, **kw)
        if return_weights:
            attentions.append(w)
    return x, attentions
