"""Weight initialisation shared by GPT-2, Llama, Gemma and BERT: N(0, std) for every Linear and
Embedding weight, zero biases, unit norm gains (Gemma's (1 + w) RMSNorm stores 0; T5 uses its
own fan-in scheme)."""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.norms import RMSNorm


@torch.no_grad()
def init_normal_weights(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            if m.weight is not None:
                (nn.init.zeros_ if getattr(m, "unit_offset", False) else nn.init.ones_)(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
