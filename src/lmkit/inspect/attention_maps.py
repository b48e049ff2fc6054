"""Attention probabilities of every layer and head, for a decoder (GPT-2, Llama, ...) or an
encoder (BERT).

The models compute attention with torch's fused SDPA kernel by default, which never forms the
probability matrix. `return_weights=True` switches each layer to the explicit
softmax(QK^T * scale + bias) path (models/attention.py) for this one forward only, so the
default path and its numerics are untouched. Padding keys get probability 0, as in
transformers' eager attention (`output_attentions=True`).
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.errors import ConfigError


def attention_maps(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """input_ids [B, T] -> one tensor per layer, [B, H, T, T], rows summing to 1 (fp32, no grad).

    Works for any lmkit model whose forward takes `return_weights` (DecoderLM, EncoderLM)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    was_training = model.training
    model.eval()  # attention dropout off: the maps are the model's, not one random draw
    try:
        with torch.no_grad():
            out = model(input_ids, attention_mask=attention_mask, return_weights=True)
    except TypeError as exc:
        raise ConfigError(f"{type(model).__name__} cannot return attention weights ({exc})") from None
    finally:
        model.train(was_training)
    return [w.float() for w in out.attentions]
