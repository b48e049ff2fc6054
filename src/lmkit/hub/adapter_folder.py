"""Adapter folders vs whole checkpoints, told apart by their files (no weights are read).

A fine-tuning run with a PEFT method writes an adapter folder, not a model:

  adapter_config.json   LoRA / QLoRA in PEFT's layout (records base_model_name_or_path)
  adalora_config.json   AdaLoRA (lmkit)
  method_config.json    every other method (adapter, fusion, prefix, prompt, P-tuning v1/v2,
                        BitFit ...), lmkit's `method_io` format

Commands that need a whole model (`quantize`, `export gguf`, `eval`) call
`require_full_checkpoint`, which names `lmkit merge` where that helps. It lives in hub, below
peft, so that hub's own commands can use it; `peft.load_any` loads what it recognises.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmkit.errors import CheckpointError

ADAPTER_FILES = {"adapter_config.json": "lora", "adalora_config.json": "adalora", "method_config.json": "method"}
MERGEABLE = ("lora", "adalora")
BASE_KEY = "base_model_name_or_path"


def adapter_kind(directory: str | os.PathLike) -> str | None:
    """"lora", "adalora" or "method" for an adapter folder; None for anything else."""
    directory = Path(directory)
    for name, kind in ADAPTER_FILES.items():
        if (directory / name).is_file():
            return kind
    return None


def is_full_checkpoint(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / "config.json").is_file() or (directory / "quantization.json").is_file()


def recorded_base(directory: str | os.PathLike) -> str | None:
    """The base model path an adapter folder records (``base_model_name_or_path``), if any."""
    directory = Path(directory)
    kind = adapter_kind(directory)
    if kind is None:
        return None
    name = next(n for n, k in ADAPTER_FILES.items() if k == kind)
    try:
        meta = json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / name}: not valid JSON ({exc})") from exc
    base = meta.get(BASE_KEY) if isinstance(meta, dict) else None
    return base if isinstance(base, str) and base else None


def require_full_checkpoint(directory: str | os.PathLike, action: str = "this command") -> None:
    """Raise a CheckpointError naming `lmkit merge` when `directory` is an adapter folder (for
    commands that need a whole model: quantize, export gguf, eval ...)."""
    directory = Path(directory)
    kind = adapter_kind(directory)
    if kind is not None and not is_full_checkpoint(directory):
        base = recorded_base(directory) or "BASE"
        if kind in MERGEABLE:
            raise CheckpointError(f"{directory} is a {kind} adapter folder, not a model; {action} needs a whole "
                                  f"model: lmkit merge {base} {directory} -o merged")
        raise CheckpointError(f"{directory} is an adapter folder ({method_name(directory)}), not a model; its "
                              f"method cannot be folded into the base weights, so {action} cannot use it")


def method_name(directory: Path) -> str:
    try:
        return json.loads((directory / "method_config.json").read_text(encoding="utf-8")).get("method", "method")
    except (OSError, ValueError, AttributeError):
        return "method"
