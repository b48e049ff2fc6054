"""P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks").

Deep prompts: p trainable key/value vectors in *every* layer, as in prefix tuning, but

  * no reparameterisation: the per-layer prompts are the parameters themselves
    (the paper found the MLP/LSTM brings little, and sometimes hurts, on NLU);
  * made for NLU: on an encoder (BERT-style, bidirectional) or a decoder, with a randomly
    initialised classification head on the [CLS] / mean / last token instead of a
    verbalizer (num_labels > 0; the head comes from probing.SequenceClassifier);
  * positions are not shifted by default (encoders number their tokens from 0 anyway).

Versus prefix tuning (prefix_tuning.py): same mechanism (prefix_tuning.DeepPromptHooks:
prompts enter each attention as extra keys/values), different parameterisation and use.
Versus prompt tuning / P-tuning v1: those add prompts only at the input embedding, where
later layers see them only through what the lower layers computed.
Trainable: L·2·p·kv_dim (+ num_labels·(d+1) for the head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.peft.method_common import MethodConfig, bad, check_choice, check_int, kv_dim
from lmkit.peft.prefix_tuning import DeepPromptHooks, freeze_for_deep_prompts
from lmkit.peft.probing import POOLINGS, SequenceClassifier


@dataclass
class PTuningV2Config(MethodConfig):
    method = "ptuning2"
    n_virtual_tokens: int = 8
    num_labels: int = 0  # > 0: add a trainable classification head (NLU)
    pooling: str = "cls"
    init_std: float = 0.02
    shift_positions: bool = False

    def __post_init__(self) -> None:
        check_int(self, "n_virtual_tokens")
        check_int(self, "num_labels", 0)
        if self.num_labels == 1:
            bad(self, "num_labels", "must be 0 (no head) or >= 2")
        check_choice(self, "pooling", POOLINGS)
        if self.init_std < 0:
            bad(self, "init_std", "must be >= 0")


class DeepPrompt(nn.Module):
    """The per-layer prompts themselves: [L, 2, n_kv_heads, p, head_dim]."""

    def __init__(self, mcfg: ModelConfig, n_tokens: int, init_std: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(mcfg.n_layers, 2, mcfg.n_kv_heads, n_tokens, mcfg.head_dim) * init_std)

    def forward(self) -> torch.Tensor:
        return self.prompts


def apply_ptuning2(model: nn.Module, config: PTuningV2Config | None = None) -> nn.Module:
    """Freeze `model`, add deep prompts (and a classification head if num_labels > 0)."""
    config = config or PTuningV2Config()
    mcfg = freeze_for_deep_prompts(model)
    p = next(model.parameters())
    model.deep_prompt = DeepPrompt(mcfg, config.n_virtual_tokens, config.init_std).to(device=p.device, dtype=p.dtype)
    model._deep_prompt_hooks = DeepPromptHooks(model, model.deep_prompt, config.n_virtual_tokens, config.shift_positions)
    if config.num_labels:
        return SequenceClassifier(model, config.num_labels, config.pooling)
    return model


def ptuning2_param_count(model_config: ModelConfig, config: PTuningV2Config) -> int:
    n = model_config.n_layers * 2 * config.n_virtual_tokens * kv_dim(model_config)
    if config.num_labels:
        n += config.num_labels * (model_config.d_model + 1)
    return n
