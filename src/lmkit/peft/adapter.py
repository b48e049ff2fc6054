"""Adapter tuning (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

A bottleneck adapter is inserted after the attention output projection and after the FFN
of every Transformer layer, *before* the sub-layer's residual addition:

    pre-norm   x = x + Adapter(Attn(Norm(x)));   x = x + Adapter(FFN(Norm(x)))
    post-norm  x = Norm(x + Adapter(Attn(x)));   x = Norm(x + Adapter(FFN(x)))

    Adapter(h) = h + W_up · act(W_down · h + b_down) + b_up      (d -> m -> d, m << d)

The skip connection plus a small initialisation (N(0, init_std^2) weights, zero biases)
makes every adapter start as (almost) the identity, so training starts from the base
model's behaviour. Only the adapters (and, as in Houlsby, optionally the layer norms) are
trained: per adapter 2·d·m + m + d parameters, two adapters per layer.

Implementation: the base modules are not replaced. Each hooked sub-module (a layer's
`self_attn` and `mlp`) gets a child `adapter_site` (an `AdapterSite`) and a forward hook
that passes the sub-module's output through it, so base parameter names are unchanged and
the adapter parameters are named ``layers.{i}.self_attn.adapter_site.adapters.{name}.{down,up}``.
A site holds any number of named adapters; `set_active_adapters` picks the one(s) used,
`adapter_fusion.py` adds an attention over several of them, `adapter_drop.py` switches
sites off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.peft.method_common import (
    MethodConfig, bad, blocks_of, check_choice, check_int, freeze, model_config_of, norm_params,
)

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
POSITIONS = ("attn", "ffn")


@dataclass
class AdapterConfig(MethodConfig):
    method = "adapter"
    name: str = "default"
    bottleneck: int = 16  # m, the adapter's inner size
    activation: str = "gelu"
    init_std: float = 1e-2  # near-identity initialisation (Houlsby: 1e-2)
    positions: tuple[str, ...] = ("attn", "ffn")  # Houlsby: both; ("ffn",) is Pfeiffer's placement
    layers: list[int] | None = None  # None: every layer
    train_norms: bool = False  # Houlsby also trains the layers' norms

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            bad(self, "name", "must be a Python identifier (it becomes a module name)")
        check_int(self, "bottleneck")
        check_choice(self, "activation", ACTIVATIONS)
        if not isinstance(self.init_std, (int, float)) or self.init_std < 0:
            bad(self, "init_std", "must be >= 0")
        self.positions = tuple(self.positions)
        if not self.positions or any(p not in POSITIONS for p in self.positions) or len(set(self.positions)) != len(self.positions):
            bad(self, "positions", f"must be a non-empty subset of {POSITIONS}")
        if self.layers is not None:
            self.layers = sorted({int(i) for i in self.layers})
            if any(i < 0 for i in self.layers):
                bad(self, "layers", "layer indices must be >= 0")


def _act(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}[name]


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))): down-projection d->m, non-linearity, up-projection m->d, residual."""

    def __init__(self, d_model: int, bottleneck: int, activation: str = "gelu", init_std: float = 1e-2) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        self.activation = activation
        self.act = _act(activation)
        with torch.no_grad():
            for lin in (self.down, self.up):
                nn.init.trunc_normal_(lin.weight, std=init_std, a=-2 * init_std, b=2 * init_std) if init_std else lin.weight.zero_()
                lin.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdapterSite(nn.Module):
    """The adapters at one insertion point (one sub-layer of one Transformer layer)."""

    def __init__(self, layer_index: int, position: str) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.position = position
        self.adapters = nn.ModuleDict()
        self.fusions = nn.ModuleDict()  # adapter_fusion.FusionLayer per fusion name
        self.active: list[str] = []  # adapters applied in sequence
        self.active_fusion: str | None = None
        self.fusion_adapters: dict[str, list[str]] = {}
        self.dropped = False  # AdapterDrop: pass the input through unchanged
        self.last_fusion_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.dropped:
            return h
        if self.active_fusion is not None:
            names = self.fusion_adapters[self.active_fusion]
            outs = [self.adapters[n](h) for n in names]
            out, w = self.fusions[self.active_fusion](h, outs)
            self.last_fusion_weights = w.detach()
            return out
        for name in self.active:
            h = self.adapters[name](h)
        return h


def _attn_hook(module, args, output):
    out, weights = output
    return module.adapter_site(out), weights


def _ffn_hook(module, args, output):
    return module.adapter_site(output)


def adapter_sites(model: nn.Module) -> list[AdapterSite]:
    """Every AdapterSite of the model, lowest layer first (attention before FFN)."""
    return [m for m in model.modules() if isinstance(m, AdapterSite)]


def ensure_site(block: nn.Module, layer_index: int, position: str) -> AdapterSite:
    """The AdapterSite of a block's sub-layer, creating it (and its forward hook) on first use."""
    module = block.self_attn if position == "attn" else block.mlp
    site = getattr(module, "adapter_site", None)
    if site is None:
        site = AdapterSite(layer_index, position)
        p = next(module.parameters())
        site.to(p.device)
        module.adapter_site = site
        module._adapter_hook = module.register_forward_hook(_attn_hook if position == "attn" else _ffn_hook)
    return site


def add_adapter(model: nn.Module, config: AdapterConfig) -> list[AdapterSite]:
    """Insert adapters named config.name (no freezing); returns the sites that got one."""
    mcfg = model_config_of(model)
    blocks = blocks_of(model)
    layers = range(len(blocks)) if config.layers is None else config.layers
    for i in layers:
        if i >= len(blocks):
            raise ConfigError(f"AdapterConfig.layers: layer {i} does not exist (the model has {len(blocks)} layers)")
    sites = []
    p = next(model.parameters())
    for i in layers:
        for pos in config.positions:
            site = ensure_site(blocks[i], i, pos)
            if config.name in site.adapters:
                raise ConfigError(
                    f"an adapter named {config.name!r} already exists in layer {i}; choose another "
                    f"AdapterConfig.name (existing: {sorted(site.adapters)})"
                )
            site.adapters[config.name] = BottleneckAdapter(
                mcfg.d_model, config.bottleneck, config.activation, config.init_std
            ).to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
            sites.append(site)
    return sites


def adapter_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for site in adapter_sites(model):
        names += [n for n in site.adapters if n not in names]
    return names


def set_active_adapters(model: nn.Module, names: str | list[str] | None) -> None:
    """Use adapter(s) `names` (applied in order) at every site that has them; None: none."""
    names = [names] if isinstance(names, str) else list(names or [])
    known = adapter_names(model)
    for n in names:
        if n not in known:
            raise ConfigError(f"no adapter named {n!r}; the model has {known}")
    for site in adapter_sites(model):
        site.active = [n for n in names if n in site.adapters]
        site.active_fusion = None


def apply_adapter(model: nn.Module, config: AdapterConfig | None = None) -> nn.Module:
    """Freeze `model`, insert Houlsby adapters, make them the active (and only trainable) ones."""
    config = config or AdapterConfig()
    freeze(model)
    sites = add_adapter(model, config)
    set_active_adapters(model, config.name)
    for site in sites:
        for p in site.adapters[config.name].parameters():
            p.requires_grad_(True)
    if config.train_norms:
        blocks = blocks_of(model)
        for i in sorted({s.layer_index for s in sites}):
            for norm in (blocks[i].attn_norm, blocks[i].mlp_norm):
                for p in norm.parameters():
                    p.requires_grad_(True)
    return model


def remove_adapters(model: nn.Module) -> None:
    """Take every adapter site and hook out again (the base model is as before)."""
    for module in list(model.modules()):
        if hasattr(module, "_adapter_hook"):
            module._adapter_hook.remove()
            del module._adapter_hook
            del module.adapter_site


def adapter_param_count(model_config: ModelConfig, config: AdapterConfig) -> int:
    d, m = model_config.d_model, config.bottleneck
    n_layers = model_config.n_layers if config.layers is None else len(config.layers)
    per_adapter = 2 * d * m + m + d
    total = n_layers * len(config.positions) * per_adapter
    if config.train_norms:
        total += n_layers * 2 * norm_params(model_config)
    return total
