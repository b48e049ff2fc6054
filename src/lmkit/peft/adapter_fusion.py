"""AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition").

Two stages. Knowledge extraction: train one adapter per task (adapter.py, any names).
Knowledge composition: freeze the base *and* the N adapters, and train at every adapter
site a fusion layer, an attention over the adapters' outputs:

    h        the sub-layer output (the adapters' common input)      [B, T, d]
    a_n      = Adapter_n(h), n = 1..N (each includes its residual)   [B, T, N, d]
    q        = W_Q h + b_Q,   k_n = W_K a_n + b_K,   v_n = W_V a_n
    s_n      = softmax_n(q · k_n / temperature)
    output   = sum_n s_n v_n

W_V starts as the identity (and has no bias), so at initialisation the output is a
convex combination of the adapters' outputs; W_Q, W_K start small. Trainable per site:
2·(d² + d) + d². The notes describe exactly this ("Q 是进入adapter前的输入，K,V 是adapter的输出").
The last attention weights of every site are kept in `site.last_fusion_weights` [B, T, N],
which shows which task's adapter each token relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.peft.adapter import adapter_sites
from lmkit.peft.method_common import MethodConfig, bad, freeze, model_config_of


@dataclass
class FusionConfig(MethodConfig):
    method = "fusion"
    adapters: list[str] = field(default_factory=list)  # names of trained adapters to fuse (>= 2)
    name: str = "fusion"
    temperature: float = 1.0
    init_std: float = 1e-2  # W_Q, W_K initialisation

    def __post_init__(self) -> None:
        self.adapters = list(self.adapters)
        if len(self.adapters) < 2 or len(set(self.adapters)) != len(self.adapters):
            bad(self, "adapters", "must name at least two different trained adapters")
        if not isinstance(self.name, str) or not self.name.isidentifier():
            bad(self, "name", "must be a Python identifier")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            bad(self, "temperature", "must be > 0")
        if self.init_std < 0:
            bad(self, "init_std", "must be >= 0")


class FusionLayer(nn.Module):
    def __init__(self, d_model: int, temperature: float = 1.0, init_std: float = 1e-2) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.temperature = temperature
        with torch.no_grad():
            for lin in (self.query, self.key):
                nn.init.normal_(lin.weight, std=init_std)
                lin.bias.zero_()
            self.value.weight.copy_(torch.eye(d_model))

    def forward(self, h: torch.Tensor, outs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.stack(outs, dim=-2)  # [B, T, N, d]
        q = self.query(h)  # [B, T, d]
        k = self.key(a)
        scores = (k @ q.unsqueeze(-1)).squeeze(-1) / self.temperature  # [B, T, N]
        w = scores.softmax(dim=-1)
        out = (w.unsqueeze(-2) @ self.value(a)).squeeze(-2)  # [B, T, d]
        return out, w


def apply_fusion(model: nn.Module, config: FusionConfig) -> nn.Module:
    """Freeze the base and the named adapters; add and activate a trainable fusion layer per site."""
    mcfg = model_config_of(model)
    sites = [s for s in adapter_sites(model) if any(n in s.adapters for n in config.adapters)]
    if not sites:
        raise ConfigError(
            f"AdapterFusion needs trained adapters {config.adapters} in the model; add them first "
            "(apply_adapter + training, or method_io.load_method)"
        )
    for s in sites:
        missing = [n for n in config.adapters if n not in s.adapters]
        if missing:
            raise ConfigError(
                f"layer {s.layer_index} ({s.position}) lacks adapters {missing}; the fused adapters must sit "
                f"at the same places (it has {sorted(s.adapters)})"
            )
        if config.name in s.fusions:
            raise ConfigError(f"a fusion named {config.name!r} already exists; choose another FusionConfig.name")
    freeze(model)
    p = next(model.parameters())
    for s in sites:
        s.fusions[config.name] = FusionLayer(mcfg.d_model, config.temperature, config.init_std).to(
            device=p.device, dtype=p.dtype
        )
        s.fusion_adapters[config.name] = list(config.adapters)
        s.active_fusion = config.name
        for q in s.fusions[config.name].parameters():
            q.requires_grad_(True)
    model._fusion_sites = len(sites)
    return model


def fusion_param_count(model_config: ModelConfig, config: FusionConfig, n_sites: int | None = None) -> int:
    """Per site 2(d² + d) + d². n_sites: adapter sites fused (default: Houlsby, 2 per layer)."""
    d = model_config.d_model
    n_sites = 2 * model_config.n_layers if n_sites is None else n_sites
    return n_sites * (2 * (d * d + d) + d * d)
