"""What a model's forward returns: a small dataclass instead of tuples whose order must be remembered."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None  # [B, T, vocab] (LM head) — or None when not computed
    loss: torch.Tensor | None = None  # mean token cross-entropy (+ aux losses) when labels were given
    hidden_states: torch.Tensor | None = None  # last layer output [B, T, d_model] (after final norm)
    aux_loss: torch.Tensor | None = None  # MoE load-balancing + router z-loss, already weighted
    attentions: list[torch.Tensor] = field(default_factory=list)  # per layer [B, H, T, S] if asked
    pooled: torch.Tensor | None = None  # encoder pooler output [B, d_model]
    nsp_logits: torch.Tensor | None = None  # BERT next-sentence head [B, 2]
    encoder_states: torch.Tensor | None = None  # encoder-decoder: encoder output
    kv_cache: object | None = None  # the cache passed in (updated in place) for chaining
