"""LoRA adapters in Hugging Face PEFT's file layout, so PEFT loads ours and we load PEFT's.

A directory holds
    adapter_config.json         {"peft_type": "LORA", "r", "lora_alpha", "target_modules",
                                 "lora_dropout", "bias", "use_rslora", "modules_to_save",
                                 "base_model_name_or_path", "task_type": "CAUSAL_LM", ...}
    adapter_model.safetensors   base_model.model.<HF module>.lora_A.weight  [r, in]
                                base_model.model.<HF module>.lora_B.weight  [out, r]
                                (+ trained biases and modules_to_save tensors under their HF names)

lmkit module names are translated to the checkpoint's names through the architecture's
name table in `lmkit.hub` (for Llama ``layers.0.self_attn.q_proj`` <->
``model.layers.0.self_attn.q_proj``). A model without a Hugging Face `model_type`, GPT-2
(whose Hugging Face layers are fused, transposed Conv1D modules: ``c_attn`` holds q, k and v),
and an adapter on MoE experts (transformers >= 5 holds them as fused [E, ...] parameters)
keeps lmkit's names and marks ``"lmkit_module_names": true`` in the config: only lmkit reads
such an adapter. A PEFT GPT-2 adapter (``fan_in_fan_out``) is refused with that reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub.hf_config import read_json_object
from lmkit.peft.peft_fused import fuse_lora, fused_layers_of, unfuse_lora
from lmkit.peft.lora import (
    LoraConfig, delete_adapter, inject_lora, load_lora_state_dict, lora_configs, lora_state_dict, set_adapter,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
LMKIT_NAMES_KEY = "lmkit_module_names"  # set when the adapter keeps lmkit's names (not PEFT-loadable)
LMKIT_NAMES_ONLY = ("gpt2",)  # HF GPT-2 fuses q/k/v into one transposed Conv1D (c_attn)
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".weight", ".bias")


def _name_map(model: nn.Module):
    """The hub NameMap of the model's architecture, or None (lmkit names are used as they are)."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", "") if cfg is not None else ""
    if not model_type:
        return None
    from lmkit.hub.pretrained import ARCH_MODULES, arch_module

    if model_type not in ARCH_MODULES:
        return None
    arch = arch_module(model_type)
    if hasattr(arch, "name_map"):
        return arch.name_map(model_type)
    per_type = getattr(arch, "NAME_MAPS", {})  # tables that differ by model_type (gemma vs gemma2)
    return per_type.get(model_type) or getattr(arch, "NAME_MAP", None)


def _split(key: str) -> tuple[str, str]:
    for suf in (".lora_A.weight", ".lora_B.weight"):
        if key.endswith(suf):
            return key[: -len(suf)], suf
    module, _, param = key.rpartition(".")
    return module, "." + param


def _module_to_theirs(name_map, module: str, param: str = "weight") -> str:
    if module.endswith(".base_layer"):
        return _module_to_theirs(name_map, module[: -len(".base_layer")], param) + ".base_layer"
    if name_map is None:
        return module
    hf = name_map.to_theirs(f"{module}.{param}")
    if hf is None:
        raise CheckpointError(
            f"{module!r} has no counterpart in the Hugging Face checkpoint names of this architecture, "
            "so PEFT could not load this adapter; target other modules"
        )
    return hf.rsplit(".", 1)[0]


def _module_to_ours(name_map, module: str, param: str = "weight") -> str | None:
    if module.endswith(".base_layer"):
        inner = _module_to_ours(name_map, module[: -len(".base_layer")], param)
        return inner + ".base_layer" if inner is not None else None
    if name_map is None:
        return module
    ours = name_map.to_ours(f"{module}.{param}")
    return ours.rsplit(".", 1)[0] if ours is not None else None


def to_peft_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lmkit adapter keys (lora_state_dict) -> PEFT's keys."""
    nm = _name_map(model)
    out = {}
    for k, v in state.items():
        module, suf = _split(k)
        param = "bias" if suf == ".bias" else "weight"
        out[PREFIX + _module_to_theirs(nm, module, param) + suf] = v.detach().contiguous().cpu()
    return out


def from_peft_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's keys -> lmkit adapter keys (CheckpointError naming keys that map to nothing)."""
    nm = _name_map(model)
    out, bad = {}, []
    for k, v in state.items():
        if not k.startswith(PREFIX):
            bad.append(k)
            continue
        module, suf = _split(k[len(PREFIX):])
        # PEFT writes keys with the adapter name removed; tolerate a stray ".default"
        param = "bias" if suf == ".bias" else "weight"
        ours = _module_to_ours(nm, module, param)
        if ours is None:
            ours = module if nm is not None and module.split(".")[0] == "layers" else None
        if ours is None:
            bad.append(k)
            continue
        out[ours + suf] = v
    if bad:
        raise CheckpointError(
            f"the adapter has {len(bad)} tensor(s) whose names do not belong to this model's architecture "
            f"(an adapter for another architecture?): {bad[:6]}"
        )
    return out


def _targets_to_theirs(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    nm = _name_map(model)
    if nm is None:
        return list(targets)
    out = []
    for t in targets:
        if t == "all-linear":
            out.append(t)
            continue
        # a short name ("q_proj") maps through any module that carries it
        hits = {n for n, _ in model.named_modules() if n == t or n.endswith("." + t)}
        mapped = set()
        for n in hits:
            n = n.replace(".base_layer", "")
            hf = nm.to_theirs(f"{n}.weight")
            if hf is not None:
                hf_mod = hf.rsplit(".", 1)[0]
                mapped.add(hf_mod.split(".")[-1] if "." not in t else hf_mod)
        out.extend(sorted(mapped) or [t])
    return sorted(set(out))


def adapter_config_dict(model: nn.Module, config: LoraConfig, base_model_name_or_path: str | None) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _targets_to_theirs(model, config.target_modules),
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "modules_to_save": list(config.modules_to_save) or None,
        "base_model_name_or_path": base_model_name_or_path,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "revision": None,
    }


def save_peft_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default",
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter `adapter_name` of `model` as adapter_config.json + adapter_model.safetensors."""
    from safetensors.torch import save_file

    from lmkit.hub.safetensors_io import staged_directory

    config = lora_configs(model).get(adapter_name)
    if config is None:
        raise ConfigError(f"no LoRA adapter named {adapter_name!r}; the model has {sorted(lora_configs(model))}")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None)
    state = lora_state_dict(model, adapter_name)
    cfg = adapter_config_dict(model, config, base_model_name_or_path)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    try:
        if model_type in LMKIT_NAMES_ONLY or any(".experts." in k for k in state):
            # transformers >= 5 also fuses MoE experts into [E, ...] parameters: no Linear for PEFT to adapt
            raise CheckpointError(f"{model_type}: Hugging Face fuses or transposes these layers")
        # parts of a fused checkpoint layer (Phi-3 qkv_proj, NeoX query_key_value) become its LoRA
        rest, fused, ranks, alphas, names, parts = fuse_lora(model, state, config.r, config.alpha, config.use_rslora)
        tensors = {**to_peft_keys(model, rest), **{PREFIX + k: v.cpu() for k, v in fused.items()}}
        if fused:
            cfg.update(rank_pattern=ranks, alpha_pattern=alphas,
                       target_modules=sorted((set(cfg["target_modules"]) - parts) | names))
    except CheckpointError:
        # no PEFT-loadable naming for these layers (GPT-2's fused, transposed Conv1D c_attn):
        # keep lmkit's module names, readable by lmkit only, and say so in the config
        tensors = {PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
        cfg["target_modules"] = list(config.target_modules)
        cfg[LMKIT_NAMES_KEY] = True
    with staged_directory(directory, replaces=(CONFIG_NAME, WEIGHTS_NAME)) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(directory)


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    return read_json_object(
        Path(directory) / CONFIG_NAME, f"{Path(directory)}: no {CONFIG_NAME} — not a PEFT adapter directory"
    )


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A list of module names from the config (None: none); anything else is a TypeError naming `key`."""
    if not value:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key} must be a list of module names, got {value!r}")
    return tuple(value)


def lora_config_from_peft(d: dict[str, Any], where: str = CONFIG_NAME) -> LoraConfig:
    """A LoraConfig from PEFT's adapter_config.json (errors for features lmkit does not have)."""
    if d.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{where}: peft_type {d.get('peft_type')!r} is not a LoRA adapter")
    if d.get("use_dora", False):
        raise CheckpointError(f"{where}: use_dora=true (DoRA) is not supported by lmkit's LoRA")
    if d.get("fan_in_fan_out", False):
        raise CheckpointError(
            f"{where}: fan_in_fan_out=true means the adapter was made for transposed Conv1D weights "
            "(Hugging Face's GPT-2 layout), another architecture than this model's Linear layers"
        )
    for key in ("rank_pattern", "alpha_pattern"):
        if d.get(key):
            raise CheckpointError(f"{where}: per-module {key} is not supported by lmkit's LoRA")
    if d.get("layers_to_transform") is not None:
        raise CheckpointError(f"{where}: layers_to_transform is not supported by lmkit's LoRA")
    targets = d.get("target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            raise CheckpointError(f"{where}: target_modules as a regular expression ({targets!r}) is not supported")
        targets = [targets]
    try:
        return LoraConfig(
            r=int(d["r"]), alpha=float(d.get("lora_alpha", 8)), dropout=float(d.get("lora_dropout", 0.0)),
            target_modules=tuple(targets or ()), use_rslora=bool(d.get("use_rslora", False)),
            bias=d.get("bias", "none"), modules_to_save=_names(d.get("modules_to_save"), "modules_to_save"),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{where}: invalid LoRA settings ({exc})") from exc


def load_peft_adapter(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Inject the adapter described by `directory` into `model` and load its weights."""
    try:
        return _load_peft_adapter(model, directory, adapter_name)
    except CheckpointError as exc:
        if str(directory) in str(exc):
            raise
        raise CheckpointError(f"{directory}: {exc}") from exc


def read_lora_adapter(model: nn.Module, directory: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """(LoraConfig, tensors under lmkit's adapter keys as in `lora_state_dict`) of the adapter
    folder `directory` (ours or PEFT's), read for `model`'s architecture without changing it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    d = read_adapter_config(directory)
    lora_config_from_peft({**d, "rank_pattern": {}, "alpha_pattern": {}}, str(directory / CONFIG_NAME))  # early errors
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} (PEFT's pickled adapter_model.bin is not read)")
    try:
        raw = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    if fused_layers_of(model) and not d.get(LMKIT_NAMES_KEY):
        # split fused layers' LoRA into lmkit's parts, every module at one rank
        raw, r, alpha = unfuse_lora(model, raw, PREFIX, int(d["r"]), float(d.get("lora_alpha", 8)),
                                    bool(d.get("use_rslora", False)), d.get("alpha_pattern") or {})
        d = {**d, "r": r, "lora_alpha": alpha, "rank_pattern": {}, "alpha_pattern": {}}
    config = lora_config_from_peft(d, str(directory / CONFIG_NAME))
    if d.get(LMKIT_NAMES_KEY):
        bad = [k for k in raw if not k.startswith(PREFIX)]
        if bad:
            raise CheckpointError(f"{weights}: unexpected tensor names {bad[:6]}")
        state = {k[len(PREFIX):]: v for k, v in raw.items()}
        nm = None
    else:
        state = from_peft_keys(model, raw)
        nm = _name_map(model)
    # PEFT's target names are HF short names; for the Llama family they equal lmkit's
    if nm is not None:
        ours = set()
        for k in state:
            module, suf = _split(k)
            if suf in (".lora_A.weight", ".lora_B.weight"):
                ours.add(module.split(".")[-1])
        if ours:
            config = LoraConfig(**{**config.to_dict(), "target_modules": tuple(sorted(ours))})
    return config, state


def _load_peft_adapter(model: nn.Module, directory: str | os.PathLike, adapter_name: str) -> nn.Module:
    directory = Path(directory)
    config, state = read_lora_adapter(model, directory)
    had_active = getattr(model, "active_lora_adapter", None)
    try:
        inject_lora(model, config, adapter_name)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: the adapter does not fit this model ({exc})") from exc
    try:
        load_lora_state_dict(model, state, adapter_name)
    except CheckpointError:
        delete_adapter(model, adapter_name)
        if had_active is not None:
            set_adapter(model, had_active)
        raise
    model.lora_configs[adapter_name] = config
    return model


def save_lora(model: nn.Module, directory, adapter_name: str = "default", base_model_name_or_path: str | None = None) -> None:
    """Write adapter `adapter_name` in PEFT's layout (adapter_config.json + adapter_model.safetensors)."""
    save_peft_adapter(model, directory, adapter_name=adapter_name, base_model_name_or_path=base_model_name_or_path)


def load_lora(model: nn.Module, directory, adapter_name: str = "default") -> nn.Module:
    """Read a PEFT-layout LoRA adapter directory (ours or PEFT's) into `model` as `adapter_name`
    (injecting the layers it needs); returns `model`."""
    return load_peft_adapter(model, directory, adapter_name=adapter_name)
