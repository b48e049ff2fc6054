"""Registry of PEFT methods: name -> (config class, apply function, closed-form param count).

    spec = get_method("prefix")
    model = spec.apply(model, spec.config_cls(n_virtual_tokens=16))
    assert count_trainable(model) == spec.param_count(model_config, cfg)

`METHODS` holds adapter, fusion, adapterdrop, prefix, prompt, ptuning, ptuning2, bitfit, probe.
"lora", "qlora", "adalora" live in lmkit.peft.lora / qlora / adalora (another module's
owner); they are resolved lazily on first use (``METHODS["lora"]`` or ``get_method("lora")``)
by looking there for ``<Name>Config``, ``apply_<name>`` and ``<name>_param_count``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from lmkit.errors import ConfigError
from lmkit.peft import adapter, adapter_drop, adapter_fusion, bitfit, p_tuning, p_tuning_v2, prefix_tuning, probing, prompt_tuning


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    apply: Callable[..., Any]
    param_count: Callable[..., int] | None
    module: str
    description: str = ""


def _spec(name: str, mod, cfg, apply, count, description: str) -> MethodSpec:
    return MethodSpec(name, getattr(mod, cfg), getattr(mod, apply), getattr(mod, count), mod.__name__, description)


LAZY = {"lora": "lmkit.peft.lora", "qlora": "lmkit.peft.qlora", "adalora": "lmkit.peft.adalora"}


class _Methods(dict):
    """A dict of MethodSpec that resolves the LoRA family lazily."""

    def __missing__(self, name: str) -> MethodSpec:
        if name not in LAZY:
            raise KeyError(name)
        spec = _lazy_spec(name)
        self[name] = spec
        return spec


def _lazy_spec(name: str) -> MethodSpec:
    try:
        mod = importlib.import_module(LAZY[name])
    except ImportError as exc:
        raise ConfigError(f"PEFT method {name!r} is not available ({LAZY[name]} cannot be imported: {exc})") from exc
    low = name.lower()
    cfg = next((getattr(mod, a) for a in dir(mod) if a.lower() == f"{low}config" and isinstance(getattr(mod, a), type)), None)
    apply = getattr(mod, f"apply_{low}", None)
    count = getattr(mod, f"{low}_param_count", None)
    if cfg is None or apply is None:
        raise ConfigError(f"{LAZY[name]} defines no {name} config class / apply_{low} function")
    return MethodSpec(name, cfg, apply, count, mod.__name__, f"{name} (from {mod.__name__})")


METHODS: dict[str, MethodSpec] = _Methods({
    "adapter": _spec("adapter", adapter, "AdapterConfig", "apply_adapter", "adapter_param_count",
                     "Houlsby bottleneck adapters after attention and FFN"),
    "fusion": _spec("fusion", adapter_fusion, "FusionConfig", "apply_fusion", "fusion_param_count",
                    "AdapterFusion: attention over N frozen trained adapters"),
    "adapterdrop": _spec("adapterdrop", adapter_drop, "AdapterDropConfig", "apply_adapterdrop",
                         "adapterdrop_param_count", "adapters without those of the lowest k layers"),
    "prefix": _spec("prefix", prefix_tuning, "PrefixTuningConfig", "apply_prefix", "prefix_param_count",
                    "per-layer key/value prefixes, MLP reparameterisation"),
    "prompt": _spec("prompt", prompt_tuning, "PromptTuningConfig", "apply_prompt", "prompt_param_count",
                    "soft prompt at the input embeddings"),
    "ptuning": _spec("ptuning", p_tuning, "PTuningConfig", "apply_ptuning", "ptuning_param_count",
                     "P-tuning v1: LSTM/MLP prompt encoder, configurable prompt positions"),
    "ptuning2": _spec("ptuning2", p_tuning_v2, "PTuningV2Config", "apply_ptuning2", "ptuning2_param_count",
                      "P-tuning v2: deep prompts in every layer, optional classification head"),
    "bitfit": _spec("bitfit", bitfit, "BitFitConfig", "apply_bitfit", "bitfit_param_count", "bias terms only"),
    "probe": _spec("probe", probing, "ProbeConfig", "apply_probe", "probe_param_count",
                   "linear probe on CLS / mean / last pooled features"),
})


def method_names() -> list[str]:
    return sorted(set(METHODS) | set(LAZY))


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown PEFT method {name!r}; choose one of {method_names()}") from None


def make_config(name: str, **options: Any):
    """The method's config built from keyword options (e.g. parsed CLI flags)."""
    spec = get_method(name)
    if hasattr(spec.config_cls, "from_dict"):
        return spec.config_cls.from_dict(options)
    return spec.config_cls(**options)
