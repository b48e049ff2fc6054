"""AdapterDrop (Rücklé et al. 2021, "AdapterDrop: On the Efficiency of Adapters in Transformers").

Adapters make inference slower (the notes: training ~60% faster than full fine-tuning,
inference 4-6% slower). AdapterDrop removes the adapters of the lowest k layers:

  * at inference the sites of layers 0..k-1 pass their input through unchanged, so the
    lower layers run at base-model speed (and, with several tasks, their activations can
    be shared between tasks: they are those of the base model);
  * "specialised" training (stochastic=False): adapters are created only in layers k..L-1,
    so training also never back-propagates below layer k (autograd stops where nothing
    needs a gradient) - the training speed-up;
  * "robust" training (stochastic=True): every layer gets an adapter, and each training
    forward drops the lowest k' layers' adapters with k' ~ U{0..L-1}, so one model can be
    run with any k at inference (`set_adapter_drop`).

It also applies to AdapterFusion (a dropped site skips the whole fusion). With k=0 the
model is exactly the full adapter model. bench/bench_peft_methods_adapterdrop.py measures the
speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.peft.adapter import AdapterConfig, adapter_param_count, adapter_sites, apply_adapter
from lmkit.peft.method_common import MethodConfig, bad, check_int, model_config_of


@dataclass
class AdapterDropConfig(MethodConfig):
    method = "adapterdrop"
    drop_layers: int = 0  # k: adapters of layers 0..k-1 are skipped at inference
    stochastic: bool = False  # robust AdapterDrop: random k' per training forward
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        check_int(self, "drop_layers", 0)
        if not isinstance(self.adapter, AdapterConfig):
            bad(self, "adapter", "must be an AdapterConfig")
        if self.adapter.layers is not None:
            bad(self, "adapter", "AdapterDrop chooses the adapter layers itself: leave adapter.layers=None")


class _DropController:
    """Forward pre-hook on the model: decides before every forward which sites are dropped."""

    def __init__(self, n_layers: int, k: int, stochastic: bool) -> None:
        self.n_layers, self.k, self.stochastic = n_layers, k, stochastic

    def __call__(self, model, args):
        k = self.k
        if model.training and self.stochastic:
            k = int(torch.randint(0, self.n_layers, ()).item())
        for site in adapter_sites(model):
            site.dropped = site.layer_index < k


def set_adapter_drop(model: nn.Module, k: int, stochastic: bool | None = None) -> None:
    """Skip the adapters (and fusions) of layers 0..k-1 from now on (k=0: use all)."""
    mcfg = model_config_of(model)
    if not 0 <= k <= mcfg.n_layers:
        raise ConfigError(f"drop_layers={k} must be in [0, n_layers={mcfg.n_layers}]")
    ctl = getattr(model, "_adapter_drop", None)
    if ctl is None:
        ctl = _DropController(mcfg.n_layers, k, bool(stochastic))
        model._adapter_drop = ctl
        model._adapter_drop_hook = model.register_forward_pre_hook(ctl)
    ctl.k = k
    if stochastic is not None:
        ctl.stochastic = stochastic
    for site in adapter_sites(model):
        site.dropped = site.layer_index < k


def apply_adapterdrop(model: nn.Module, config: AdapterDropConfig | None = None) -> nn.Module:
    """Add adapters (all layers if stochastic, else layers k..L-1) and AdapterDrop's switch.

    A model that already has adapters named config.adapter.name keeps them (their
    trainability is left as it is): AdapterDrop then only adds the switch.
    """
    config = config or AdapterDropConfig()
    mcfg = model_config_of(model)
    if config.drop_layers > mcfg.n_layers:
        raise ConfigError(f"AdapterDropConfig.drop_layers={config.drop_layers} > n_layers={mcfg.n_layers}")
    has = any(config.adapter.name in s.adapters for s in adapter_sites(model))
    if not has:
        layers = None if config.stochastic else list(range(config.drop_layers, mcfg.n_layers))
        if layers == []:
            raise ConfigError("drop_layers equals n_layers with stochastic=False: no adapter would be left to train")
        acfg = AdapterConfig(**{**config.adapter.to_dict(), "layers": layers})
        apply_adapter(model, acfg)
    set_adapter_drop(model, config.drop_layers, config.stochastic)
    return model


def adapterdrop_param_count(model_config: ModelConfig, config: AdapterDropConfig) -> int:
    layers = None if config.stochastic else list(range(config.drop_layers, model_config.n_layers))
    return adapter_param_count(model_config, AdapterConfig(**{**config.adapter.to_dict(), "layers": layers}))
