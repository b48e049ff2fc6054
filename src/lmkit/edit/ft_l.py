"""FT-L: the baseline of the editing papers. Fine-tune one layer's MLP down_proj on the new facts,
with every weight kept within an L∞ ball of radius `max_change` around its value before the edit
(projected after each step), so the change stays small everywhere instead of being targeted."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.edit.layer_hooks import down_proj, only_trainable
from lmkit.edit.prompt_tokens import pad_right, target_ids
from lmkit.edit.target_vector import EditRequest


@dataclass
class FineTuneConfig:
    layer: int = 1
    steps: int = 50
    lr: float = 5e-3
    max_change: float = 1e-2  # L∞ bound on each weight's change


def apply_ft_l(model: nn.Module, tokenizer, requests: list[EditRequest], cfg: FineTuneConfig | None = None) -> None:
    """Fine-tune layers.{cfg.layer}.mlp.down_proj (in place) on the requests' prompts + new targets."""
    cfg = cfg or FineTuneConfig()
    proj = down_proj(model, cfg.layer)
    prompts = [tokenizer.encode(r.prompt.format(r.subject)) for r in requests]
    tgts = [target_ids(tokenizer, r.target_new) for r in requests]
    ids = pad_right([p + t for p, t in zip(prompts, tgts)])
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompts, tgts)):
        labels[i, len(p): len(p) + len(t)] = torch.tensor(t)
    original = proj.weight.detach().clone()
    opt = torch.optim.Adam([proj.weight], lr=cfg.lr)
    with only_trainable(model, proj.weight):
        for _ in range(cfg.steps):
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                proj.weight.copy_(original + (proj.weight - original).clamp(-cfg.max_change, cfg.max_change))
