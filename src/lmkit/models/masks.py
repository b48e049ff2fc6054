"""Attention masks: one builder, `attention_bias`, shared by every stack.

Masks are built from the slot indices of the queries and keys (`q_pos`, `k_pos`), so one
code path serves a full forward and a KV-cached step, where the new queries are the last
slots of the keys (q_pos = past .. past+T-1, k_pos = 0 .. past+T-1). What may key j see:

  causal          j <= i                                               (GPT, Llama, decoders)
  bidirectional   every key (causal=False)                             (BERT, T5 encoder, cross-attention)
  sliding window  causal and i - j < window                            (Mistral; as transformers)
  padding         key j is a real token (attention_mask[b, j] == 1)
  prefix-LM       also: query and key both inside the row's prefix, counted in real tokens,
                  so left padding does not move the boundary             (UniLM, GLM, T5 prefix-LM)
  documents       query and key belong to the same packed example (document_ids)

The result is the float tensor that `scaled_dot_product_attention` adds to the scores (a score
bias such as ALiBi or T5's relative bias folded in), or None when nothing beyond SDPA's own
`is_causal` (for a causal stack) restricts attention — the caller then lets SDPA pick its fused
kernel. Masked entries get the dtype's most negative finite value rather than -inf, so a fully
masked row (a left-pad query) yields a harmless uniform distribution instead of NaN.
"""

from __future__ import annotations

import torch


def real_tokens(
    attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device, name: str = "attention_mask"
) -> torch.Tensor | None:
    """Validate a 1/0 padding mask [batch, length] -> bool (True = real token), or None when
    nothing is padded (so the callers can keep their fast paths)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch, length):
        raise ValueError(f"{name} has shape {tuple(attention_mask.shape)}, expected [batch={batch}, {length}]")
    if bool(attention_mask.all()):
        return None
    return attention_mask.to(device).bool()


def attention_bias(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    dtype: torch.dtype,
    *,
    causal: bool,
    window: int | None = None,
    padding: torch.Tensor | None = None,
    prefix_len: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Additive attention bias [B|1, H|1, Tq, Tk] for queries at slots q_pos [Tq] over keys
    at slots k_pos [Tk], or None when SDPA needs none (see the module docstring).

    window: sliding-window size (causal stacks). padding: bool [B, Tk], True = real token
    (from `real_tokens`). prefix_len [B]: prefix-LM prefix of each row, in real tokens.
    document_ids [B, Tq] (Tq == Tk, no cache): packed examples never attend across each other.
    score_bias: [H, Tq, Tk] or [B, H, Tq, Tk] added to the scores (ALiBi, T5 relative bias).
    """
    if window is not None and window >= len(k_pos):
        window = None  # every causal key is inside the window
    plain = window is None and padding is None and prefix_len is None and document_ids is None
    if plain and score_bias is None and (not causal or len(q_pos) in (1, len(k_pos))):
        return None  # SDPA's is_causal kernel, one new query that sees all keys, or full attention
    allowed = _allowed(q_pos, k_pos, causal, window, padding, prefix_len, document_ids)
    return to_additive_bias(allowed, dtype, score_bias)


def causal_bias(t: int, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[T, S] causal bias for T queries that are the last T of S keys (bottom-right aligned:
    SDPA's own is_causal aligns top-left, which is wrong once keys are cached or prefixed)."""
    return to_additive_bias(_allowed(torch.arange(s - t, s, device=device), torch.arange(s, device=device),
                                     True, None, None, None, None)[0], dtype)[0, 0]


def _allowed(q_pos, k_pos, causal, window, padding, prefix_len, document_ids) -> torch.Tensor | None:
    """Boolean "may attend" mask [B|1, Tq, Tk], or None when every key is visible."""
    allowed = None
    if causal:
        diff = q_pos[:, None] - k_pos[None, :]
        allowed = (diff >= 0) if window is None else (diff >= 0) & (diff < window)
        allowed = allowed[None]
    if prefix_len is not None:
        prefix_len = torch.as_tensor(prefix_len, device=k_pos.device).reshape(-1)
        rank = k_pos[None] if padding is None else padding.long().cumsum(-1) - 1  # index among real tokens
        in_prefix = rank < prefix_len[:, None]  # [B, Tk]
        if padding is not None:
            in_prefix = in_prefix & padding
        both = in_prefix[:, None, :] & in_prefix[:, q_pos][:, :, None]
        allowed = both if allowed is None else allowed | both
    if padding is not None:
        allowed = padding[:, None, :] if allowed is None else allowed & padding[:, None, :]
    if document_ids is not None:
        same = document_ids[:, :, None] == document_ids[:, None, :]
        allowed = same if allowed is None else allowed & same
    return allowed


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
