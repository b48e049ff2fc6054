"""Policy with a value head: the actor and the critic of PPO on one trunk.

The value head reads the decoder's final hidden state (after the final norm) at every
position: V_t estimates the return from the state "prompt + response[:t+1]", i.e. the
value before the next token is chosen — aligned with the logits at position t that
choose token t+1. Sharing the trunk saves a second model's memory compared with a separate
critic; the value loss is down-weighted (vf_coef) so it does not
disturb the language model. With a LoRA policy only the adapters and the value head train.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(d_model, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (d_model + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T] values (fp32)."""
        return self.summary(self.dropout(hidden_states).to(self.summary.weight.dtype)).squeeze(-1).float()


class PolicyWithValue(nn.Module):
    """`lm` (a DecoderLM, possibly with LoRA) + `value_head`; forward -> (logits, values)."""

    def __init__(self, lm: nn.Module, value_dropout: float = 0.0) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.value_head = ValueHead(lm.config.d_model, value_dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        out = self.lm(input_ids, attention_mask=attention_mask)
        return out.logits, self.value_head(out.hidden_states)
