"""Save / load the trained weights of a PEFT method (not LoRA's PEFT-format files; see peft_format.py).

A method directory holds

    method_config.json        {"format": "lmkit-peft-method", "version": 1, "method": "prefix",
                               "config": {...the method config...}, "parameters": N, "base": {...}}
    method_model.safetensors  the method's trainable tensors, named as in the model it was applied to

Both files are written atomically (temp file + rename; the weights first, so a directory
whose config exists is complete). Loading applies the method to a fresh base model and
copies the tensors in; names, shapes and the base architecture are checked and every
mismatch is reported by name. Which tensors: every parameter with requires_grad - after
`apply_<method>` exactly the method's own (adapters, fusion layers, prefixes, prompts,
prompt encoder, biases, probe head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from lmkit.atomic import atomic_path, atomic_write_text
from lmkit.errors import CheckpointError, ConfigError
from lmkit.peft.method_common import model_config_of
from lmkit.peft.registry import get_method

CONFIG_NAME = "method_config.json"
WEIGHTS_NAME = "method_model.safetensors"
FORMAT = "lmkit-peft-method"
_BASE_KEYS = ("arch", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "d_ff")


def method_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of `model`, detached, contiguous, deduplicated by identity."""
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().contiguous().cpu()
    return out


def save_method(model: nn.Module, directory: str | os.PathLike, method: str, config,
                base_model_name_or_path: str | None = None) -> Path:
    """Write the method's weights and config; `base_model_name_or_path` is recorded so the folder
    can be run on its own (`peft.load_any.load_model_for_inference`)."""
    from safetensors.torch import save_file

    get_method(method)  # validates the name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = method_state_dict(model)
    if not state:
        raise ConfigError("save_method: the model has no trainable parameters (was the method applied?)")
    mcfg = model_config_of(model)
    meta = {
        "format": FORMAT,
        "version": 1,
        "method": method,
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config.__dict__),
        "parameters": sum(t.numel() for t in state.values()),
        "base": {k: getattr(mcfg, k) for k in _BASE_KEYS},
    }
    if base_model_name_or_path is not None:
        meta["base_model_name_or_path"] = str(base_model_name_or_path)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "method": method})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_method_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a saved PEFT method directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "method" not in meta:
        raise CheckpointError(f"{path} is not an lmkit PEFT method config (format {FORMAT!r})")
    return meta


def load_method(model: nn.Module, directory: str | os.PathLike, **apply_kwargs) -> nn.Module:
    """Apply the saved method to base `model` and load its weights; returns the adapted model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_method_config(directory)
    spec = get_method(meta["method"])
    mcfg = model_config_of(model)
    base = meta.get("base", {})
    diff = [f"{k}: saved {base[k]!r}, model {getattr(mcfg, k)!r}" for k in _BASE_KEYS if k in base and base[k] != getattr(mcfg, k)]
    if diff:
        raise CheckpointError(f"{directory} was trained on another architecture ({'; '.join(diff)})")
    config = spec.config_cls.from_dict(meta["config"]) if hasattr(spec.config_cls, "from_dict") else spec.config_cls(**meta["config"])
    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} cannot be read ({exc})") from exc
    model = spec.apply(model, config, **apply_kwargs)
    params = dict(model.named_parameters())
    wanted = method_state_dict(model)
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(params))
    shapes = [f"{k}: saved {tuple(v.shape)}, model {tuple(params[k].shape)}" for k, v in state.items()
              if k in params and tuple(v.shape) != tuple(params[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} does not fit the {meta['method']} model: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shapes {shapes[:8]}"
        )
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))
    return model
