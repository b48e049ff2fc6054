"""Multi-head attention with MHA / GQA / MQA, self- and cross-attention.

n_kv_heads == n_heads is MHA; 1 is MQA (Shazeer 2019); anything between is GQA
(Ainslie et al. 2023): query head h reads key/value head h // (n_heads / n_kv_heads).

Two paths compute the same thing:
  fast      torch's scaled_dot_product_attention (flash / memory-efficient kernels);
  explicit  softmax(QK^T * scale + bias) V written out, and able to return the weights
            (for visualisation and interpretability); also the path of Gemma 2's soft-capped
            scores, softmax(c * tanh(QK^T * scale / c) + bias) V, which SDPA cannot compute.

KV cache protocol: `kv_cache` is any object with ``update(k, v) -> (k_all, v_all)``
taking the new keys/values [B, n_kv_heads, T_new, head_dim] and returning all of them
so far (see models/kv_cache.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.masks import causal_bias
from lmkit.models.norms import make_norm
from lmkit.models.positional import apply_rope
from lmkit.models.softcap import soft_cap


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D], each KV head repeated for its query group."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.cross = cross
        self.scale = 1.0 / math.sqrt(config.query_pre_attn_scalar or self.head_dim) if config.scale_attn else 1.0
        self.softcap = config.attn_logit_softcapping
        self.attn_dropout = config.attn_dropout
        d, hd = config.d_model, config.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=config.o_bias)
        # q/k norm (Qwen3, Gemma 3, OLMo 2) keeps attention logits bounded without clipping
        self.qk_norm = config.qk_norm
        if config.qk_norm == "head":
            self.q_norm, self.k_norm = make_norm(config, hd), make_norm(config, hd)
        elif config.qk_norm == "full":
            self.q_norm = make_norm(config, self.n_heads * hd)
            self.k_norm = make_norm(config, self.n_kv_heads * hd)

    def forward(
        self,
        x: torch.Tensor,
        *,
        attn_bias: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache=None,
        kv_input: torch.Tensor | None = None,
        is_causal: bool = False,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, T, d_model] -> ([B, T, d_model], weights [B, H, T, S] if asked).

        attn_bias: additive float mask [B|1, H|1, T, S] (see masks.to_additive_bias).
        is_causal: only used when attn_bias is None (lets SDPA pick its causal kernel).
        kv_input: the encoder states for cross-attention.
        """
        b, t, _ = x.shape
        src = x if kv_input is None else kv_input
        q, k = self.q_proj(x), self.k_proj(src)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, src.shape[1], self.n_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(src).view(b, src.shape[1], self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        dropout = self.attn_dropout if self.training else 0.0
        causal = is_causal and attn_bias is None and t > 1
        if causal and k.shape[-2] != t:
            # SDPA's is_causal aligns the mask top-left; with cached keys the new queries are
            # the last t positions, so build the bottom-right-aligned mask explicitly.
            attn_bias, causal = causal_bias(t, k.shape[-2], q.dtype, q.device), False
        if return_weights or self.softcap is not None:
            out, weights = self._explicit(q, k, v, attn_bias, causal, dropout)
            weights = weights if return_weights else None
        else:
            weights = None
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=dropout, is_causal=causal, scale=self.scale
            )
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.o_proj(out), weights  # residual dropout is the block's

    def _explicit(self, q, k, v, attn_bias, causal, dropout):
        scores = (q @ k.transpose(-2, -1)).float() * self.scale
        if self.softcap is not None:
            scores = soft_cap(scores, self.softcap)
        if causal:
            scores = scores + causal_bias(*scores.shape[-2:], scores.dtype, q.device)
        if attn_bias is not None:
            scores = scores + attn_bias.float()
        weights = scores.softmax(dim=-1).to(q.dtype)
        out = F.dropout(weights, dropout, self.training) @ v
        return out, weights
