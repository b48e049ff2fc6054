"""Linear probing: a frozen encoder/decoder and a trainable linear classifier on pooled features.

The notes (Probing 方法): a light prediction head after the *last* layer, the model frozen;
the L token states become one vector by

    cls   the first token's final state (BERT's [CLS]; in a causal decoder it has seen only itself)
    mean  the average over real (unpadded) tokens ("平均化策略")
    last  the last real token's state (the natural choice for a causal decoder, which has seen everything)

`SequenceClassifier` is also the classification head of P-tuning v2 (p_tuning_v2.py) and can
sit on any base whose forward returns `hidden_states` (DecoderLM, EncoderLM, prompt wrappers).
Trainable: num_labels·(d + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.output import ModelOutput
from lmkit.peft.method_common import MethodConfig, check_choice, check_int, freeze, model_config_of

POOLINGS = ("cls", "mean", "last")


@dataclass
class ProbeConfig(MethodConfig):
    method = "probe"
    num_labels: int = 2
    pooling: str = "cls"

    def __post_init__(self) -> None:
        check_int(self, "num_labels", 2)
        check_choice(self, "pooling", POOLINGS)


def pool(h: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """h [B, T, d] -> [B, d] by CLS / mean / last-real-token pooling."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: choose one of {POOLINGS}")
    b, t, _ = h.shape
    if attention_mask is None:
        attention_mask = torch.ones(b, t, dtype=torch.long, device=h.device)
    m = attention_mask.to(h.device).long()
    if pooling == "mean":
        w = m[..., None].to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
    idx = torch.arange(t, device=h.device)[None].expand(b, t)
    if pooling == "cls":  # first real token (left padding aware)
        first = torch.where(m.bool(), idx, torch.full_like(idx, t)).min(1).values.clamp(max=t - 1)
        return h[torch.arange(b, device=h.device), first]
    last = torch.where(m.bool(), idx, torch.full_like(idx, -1)).max(1).values.clamp(min=0)
    return h[torch.arange(b, device=h.device), last]


class SequenceClassifier(nn.Module):
    """base model -> hidden states -> pooling -> Linear(d, num_labels); loss = cross-entropy on labels [B]."""

    def __init__(self, base: nn.Module, num_labels: int, pooling: str = "cls") -> None:
        super().__init__()
        self.base_model = base
        self.config = model_config_of(base)
        self.pooling = pooling
        p = next(base.parameters())
        self.head = nn.Linear(self.config.d_model, num_labels).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            nn.init.normal_(self.head.weight, std=self.config.initializer_range)
            self.head.bias.zero_()

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        self.base_model.gradient_checkpointing_enable(enabled)

    def features(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        h = self.base_model(input_ids, attention_mask=attention_mask, **kwargs).hidden_states
        return pool(h, attention_mask, self.pooling)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs) -> ModelOutput:
        feats = self.features(input_ids, attention_mask, **kwargs)
        logits = self.head(feats)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device).reshape(-1))
        return ModelOutput(logits=logits, loss=loss, hidden_states=feats)


def apply_probe(model: nn.Module, config: ProbeConfig | None = None) -> SequenceClassifier:
    """Freeze `model`; return a SequenceClassifier whose linear head is the only trainable part."""
    config = config or ProbeConfig()
    freeze(model)
    return SequenceClassifier(model, config.num_labels, config.pooling)


def probe_param_count(model_config: ModelConfig, config: ProbeConfig) -> int:
    return config.num_labels * (model_config.d_model + 1)
