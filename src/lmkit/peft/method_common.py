"""Shared plumbing for the non-LoRA PEFT methods: freezing, counting, config (de)serialisation.

Every method module (adapter, adapter_fusion, adapter_drop, prefix_tuning, prompt_tuning,
p_tuning, p_tuning_v2, bitfit, probing) defines

    <Method>Config              a validated dataclass (JSON round-trip via to_dict/from_dict)
    apply_<method>(model, cfg)  freezes the base, adds the method, returns the model to train
    <method>_param_count(model_config, cfg)   the closed-form number of trainable parameters

The helpers here keep those modules short and uniform.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig, dataclass_from_dict


class MethodConfig:
    """Mixin for method configs: `method` names the registry entry; JSON (de)serialisation."""

    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return dataclass_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


def bad(cfg: object, name: str, why: str) -> None:
    raise ConfigError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r}: {why}")


def check_int(cfg: object, name: str, minimum: int = 1) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        bad(cfg, name, f"must be an integer >= {minimum}")


def check_choice(cfg: object, name: str, choices: tuple) -> None:
    if getattr(cfg, name) not in choices:
        bad(cfg, name, f"must be one of {choices}")


def check_prob(cfg: object, name: str) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        bad(cfg, name, "must be in [0, 1)")


def model_config_of(model: nn.Module) -> ModelConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(
            f"{type(model).__name__} has no lmkit ModelConfig (.config); PEFT methods need an lmkit "
            "DecoderLM or EncoderLM (load Hugging Face checkpoints with lmkit.hub.load_pretrained)"
        )
    return cfg


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The Transformer layers of a DecoderLM / EncoderLM (or of a wrapper's base model)."""
    while not hasattr(model, "layers") and hasattr(model, "base_model"):
        model = model.base_model
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in layers):
        raise ConfigError(
            f"{type(model).__name__} has no Transformer layers (.layers with self_attn/mlp); "
            "this method supports lmkit DecoderLM and EncoderLM"
        )
    return layers


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def count_total(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def kv_dim(cfg: ModelConfig) -> int:
    return cfg.n_kv_heads * cfg.head_dim


def norm_params(cfg: ModelConfig) -> int:
    """Parameters of one norm layer (RMSNorm: weight; LayerNorm: weight (+ bias))."""
    if cfg.norm == "layernorm" and cfg.norm_bias:
        return 2 * cfg.d_model
    return cfg.d_model
