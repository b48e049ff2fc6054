"""LSTM language model: the recurrent baseline the Transformer replaced.

Embedding -> stacked LSTM -> (optional projection) -> softmax over the vocabulary, trained
with the same shifted cross-entropy as `DecoderLM`. Its state is O(1) in sequence length
but it must process tokens one after another, which is what attention removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.output import ModelOutput


class LSTMLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.d_model, config.d_model, num_layers=config.n_layers, batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        nn.init.normal_(self.embed_tokens.weight, std=config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """`state` carries (h, c) across calls for streaming; returned in `kv_cache`.

        attention_mask is accepted for a uniform batch interface; right padding only
        (padded steps come after the real ones and their outputs are ignored via labels).
        """
        h, new_state = self.lstm(self.dropout(self.embed_tokens(input_ids)), state)
        h = self.dropout(h)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return ModelOutput(logits=logits, loss=loss, hidden_states=h, kv_cache=new_state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
