"""Attention masks as boolean "may attend" tensors, built from absolute positions so the
same code serves full forwards and KV-cached incremental steps.

  causal          key j visible to query i iff j <= i                  (GPT, Llama)
  bidirectional   every key visible                                    (BERT, T5 encoder)
  prefix-LM       j <= i, or j inside the prefix (prefix is bidirectional; UniLM, GLM, T5 prefix-LM)
  sliding window  causal and i - j < window                            (Mistral, Longformer-style local)
  padding         key j visible iff attention_mask[b, j] == 1

`to_additive_bias` turns a boolean mask (plus an optional score bias such as ALiBi) into the
float tensor that `scaled_dot_product_attention` adds to the scores. Masked entries get the
dtype's most negative finite value rather than -inf, so a fully masked row (a left-pad query)
yields a harmless uniform distribution instead of NaN.
"""

from __future__ import annotations

import torch


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """[Tq], [Tk] -> [Tq, Tk]."""
    return k_pos[None, :] <= q_pos[:, None]


def bidirectional_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(q_pos), len(k_pos), dtype=torch.bool, device=q_pos.device)


def sliding_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Causal, and at most `window` keys (the query's own position included)."""
    diff = q_pos[:, None] - k_pos[None, :]
    return (diff >= 0) & (diff < window)


def prefix_lm_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """prefix_len [B] -> [B, Tq, Tk]: causal, plus full visibility inside each row's prefix."""
    causal = causal_mask(q_pos, k_pos)[None]
    in_prefix = k_pos[None, None, :] < prefix_len.to(k_pos.device)[:, None, None]
    return causal | in_prefix


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, Tk] of 1 (token) / 0 (pad) -> [B, 1, Tk]."""
    return attention_mask.bool()[:, None, :]


def to_additive_bias(
    allowed: torch.Tensor | None, dtype: torch.dtype, score_bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Boolean mask [.., Tq, Tk] (+ score bias [H, Tq, Tk] or [B, H, Tq, Tk]) -> [B|1, H|1, Tq, Tk]."""
    if allowed is None and score_bias is None:
        return None
    bias = torch.zeros((), dtype=dtype) if score_bias is None else score_bias.to(dtype)
    if bias.dim() == 3:
        bias = bias[None]
    if allowed is not None:
        while allowed.dim() < 4:
            allowed = allowed.unsqueeze(-3) if allowed.dim() == 3 else allowed[None]
        bias = bias.to(allowed.device).expand(
            *torch.broadcast_shapes(bias.shape if bias.dim() else (1, 1, 1, 1), allowed.shape)
        )
        bias = bias.masked_fill(~allowed, torch.finfo(dtype).min)
    return bias
