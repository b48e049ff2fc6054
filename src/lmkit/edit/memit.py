"""MEMIT (Meng et al. 2023): write many facts at once, spread over several MLP layers.

For each request the target z_i = h_L + δ_i of the residual stream after the last edited layer L,
at the subject's last token, is found as in ROME (target_vector.py, site = block L). Then, layer by
layer from the lowest, with the keys K = [k_i] at that layer (mean over prefixes) and the residual
R = [z_i - h_L,i] still missing (recomputed after the layers below changed), the layer takes its
share R / (layers left) by the batch least-squares update

    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹          (C = E[k kᵀ] on generic text, λ = cov_weight)

which maps the new keys to their values while keeping W k for the keys of ordinary text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmkit.edit.layer_hooks import at_positions, block, down_proj, record_outputs
from lmkit.edit.prompt_tokens import encode_subject_prompt, pad_right
from lmkit.edit.rome import mean_key
from lmkit.edit.target_vector import EditRequest, TargetVectorConfig, optimise_site_deltas
from lmkit.errors import ConfigError


@dataclass
class MemitConfig:
    layers: list[int] = field(default_factory=lambda: [0, 1])
    cov_weight: float = 2.0
    target: TargetVectorConfig = field(default_factory=TargetVectorConfig)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("MemitConfig.layers must name at least one layer")
        if self.cov_weight <= 0:
            raise ConfigError(f"MemitConfig.cov_weight must be > 0, got {self.cov_weight}")


@torch.no_grad()
def _hidden_at_subject(model: nn.Module, tokenizer, layer: int, requests: list[EditRequest]) -> torch.Tensor:
    """[n, d]: the residual stream after block `layer` at each request's subject (bare prompt)."""
    prompts = [encode_subject_prompt(tokenizer, r.prompt, r.subject) for r in requests]
    with record_outputs(block(model, layer)) as seen:
        model(pad_right([p.ids for p in prompts]))
    return at_positions(seen[0], [p.subject_last for p in prompts])


def memit_update(keys: torch.Tensor, residuals: torch.Tensor, second_moment: torch.Tensor,
                 cov_weight: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ for keys K [d_ff, n] and residuals R [d, n] (float64)."""
    k, r = keys.double(), residuals.double()
    adjusted = torch.linalg.solve(cov_weight * second_moment.double() + k @ k.T, k)
    return r @ adjusted.T


def apply_memit(model: nn.Module, tokenizer, requests: list[EditRequest], second_moments: dict[int, torch.Tensor],
                prefixes: list[str], cfg: MemitConfig | None = None) -> dict[int, torch.Tensor]:
    """Write every request into `model` (in place); -> layer -> the ΔW added to its down_proj."""
    cfg = cfg or MemitConfig()
    layers = sorted(cfg.layers)
    missing = [l for l in layers if l not in second_moments]
    if missing:
        raise ConfigError(f"MEMIT needs the key second moment of layers {missing}")
    last = layers[-1]
    h, delta = optimise_site_deltas(model, tokenizer, block(model, last), requests, prefixes, cfg.target)
    z = h + delta
    updates = {}
    for i, layer in enumerate(layers):
        keys = torch.stack([mean_key(model, tokenizer, layer, r, prefixes) for r in requests])
        residual = (z - _hidden_at_subject(model, tokenizer, last, requests)) / (len(layers) - i)
        update = memit_update(keys.T, residual.T, second_moments[layer], cfg.cov_weight)
        with torch.no_grad():
            proj = down_proj(model, layer)
            proj.weight.add_(update.to(proj.weight.dtype))
        updates[layer] = update.float()
    return updates
