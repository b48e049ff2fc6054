"""Merge checkpoints on disk: Hugging Face directories, lmkit training checkpoints, LoRA adapters.

    merge_checkpoints(models, cfg, out, base=None, lora_combine="delta") -> summary dict

Full checkpoints: a Hugging Face directory (config.json + safetensors, read through
`lmkit.hub`) or an lmkit training run / checkpoint-STEP directory (its trainer_state.json
records the model config). The merged model is written as a Hugging Face directory with the
tokenizer files of the base (else the first model).

LoRA adapters (folders with adapter_config.json, ours or PEFT's) of one base, given with the
base: `lora_combine` picks how (merge_lora.py): "delta" merges the weight updates s·B·A with
the chosen method and writes a full checkpoint; "cat" (exact) and "linear" (PEFT's
approximation) write a new adapter folder and need method linear or task_arithmetic (the
weights scale the adapters, nothing is normalised).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lmkit.edit.merge_lora import combine_cat, combine_linear, lora_task_vectors
from lmkit.edit.merge_state import MergeConfig, merge_state_dicts
from lmkit.errors import CheckpointError, ConfigError

LORA_COMBINE = ("delta", "cat", "linear")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.lmkit.json",
                   "chat_template.jinja", "generation_config.json")


def is_lora_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def load_model_for_merge(path: str | os.PathLike) -> nn.Module:
    """The model of a Hugging Face directory or an lmkit training run / checkpoint directory."""
    p = Path(path)
    if (p / "config.json").is_file():
        from lmkit.hub import load_pretrained

        return load_pretrained(p)
    from lmkit.models.build import build_model
    from lmkit.models.config import ModelConfig
    from lmkit.train.checkpoint import read_model_state, read_state, resolve_checkpoint

    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory (a Hugging Face checkpoint, an lmkit run or an adapter folder)")
    ckpt = resolve_checkpoint(p)
    config = read_state(ckpt).get("model_config")
    if not config:
        raise CheckpointError(f"{ckpt}: trainer_state.json records no model_config; export it with config.json first")
    model = build_model(ModelConfig.from_dict(config))
    model.load_state_dict(read_model_state(ckpt), strict=True)
    return model.eval()


def _save(model: nn.Module, out: Path, template: Path) -> None:
    from lmkit.hub import save_pretrained

    out.mkdir(parents=True, exist_ok=True)
    if template.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (template / name).is_file():
                shutil.copy2(template / name, out / name)
    save_pretrained(model, out)


def _merge_full(models: Sequence[str], cfg: MergeConfig, out: Path, base: str | None) -> dict:
    template_path = Path(base or models[0])
    loaded = [load_model_for_merge(p) for p in models]
    base_model = load_model_for_merge(base) if base else None
    template = base_model if base_model is not None else loaded[0]
    names = ([str(base)] if base else []) + [str(m) for m in models]
    merged = merge_state_dicts([m.state_dict() for m in loaded], cfg,
                               base_model.state_dict() if base_model is not None else None, names=names)
    template.load_state_dict(merged, strict=True)
    _save(template, out, template_path)
    return {"kind": "checkpoint", "tensors": len(merged)}


def _read_adapters(base_model: nn.Module, adapters: Sequence[str]):
    from lmkit.peft.peft_format import read_lora_adapter

    return [read_lora_adapter(base_model, a) for a in adapters]


def _merge_lora(adapters: Sequence[str], cfg: MergeConfig, out: Path, base: str | None, combine: str) -> dict:
    if base is None:
        raise ConfigError("merging LoRA adapters needs --base, the model they were trained on")
    base_model = load_model_for_merge(base)
    read = _read_adapters(base_model, adapters)
    if combine == "delta":
        base_state = base_model.state_dict()
        deltas = [lora_task_vectors(a) for a in read]
        keys = sorted({k for d in deltas for k in d})
        missing = [k for k in keys if k not in base_state]
        if missing:
            raise CheckpointError(f"the adapters change {missing[:4]}, which the base {base} does not have")
        sub_base = {k: base_state[k] for k in keys}
        tuned = [{k: sub_base[k].float() + d.get(k, torch.zeros(())) for k in keys} for d in deltas]
        averaging = cfg.method in ("linear", "soup")  # these average the models and take no base
        names = ([] if averaging else [str(base)]) + [str(a) for a in adapters]
        merged = merge_state_dicts(tuned, cfg, None if averaging else sub_base, names=names)
        base_model.load_state_dict({**base_state, **merged}, strict=True)
        _save(base_model, out, Path(base))
        return {"kind": "checkpoint", "tensors": len(merged)}
    if cfg.method not in ("linear", "task_arithmetic"):
        raise ConfigError(f"--lora-combine {combine} builds a new adapter from weighted adapters: use --method linear "
                          f"or task_arithmetic, or --lora-combine delta for {cfg.method}")
    from lmkit.peft.lora import inject_lora, load_lora_state_dict
    from lmkit.peft.peft_format import save_lora

    config, state = (combine_cat if combine == "cat" else combine_linear)(read, cfg.weights)
    inject_lora(base_model, config, "merged")
    load_lora_state_dict(base_model, state, "merged")
    save_lora(base_model, out, "merged", base_model_name_or_path=str(base))
    return {"kind": "adapter", "r": config.r, "modules": len(state) // 2}


def merge_checkpoints(models: Sequence[str | os.PathLike], cfg: MergeConfig, out: str | os.PathLike,
                      base: str | os.PathLike | None = None, lora_combine: str = "delta") -> dict:
    """Merge `models` (full checkpoints, or LoRA adapters of `base`) into `out`; a short summary."""
    if lora_combine not in LORA_COMBINE:
        raise ConfigError(f"lora_combine={lora_combine!r}: must be one of {', '.join(LORA_COMBINE)}")
    models = [str(m) for m in models]
    base = str(base) if base is not None else None
    lora = [is_lora_adapter(m) for m in models]
    if any(lora) and not all(lora):
        raise ConfigError("give either full checkpoints or LoRA adapters, not both")
    if base is not None and is_lora_adapter(base):
        raise ConfigError(f"--base {base} is an adapter folder: the base must be a full checkpoint")
    if all(lora):
        return _merge_lora(models, cfg, Path(out), base, lora_combine)
    return _merge_full(models, cfg, Path(out), base)
