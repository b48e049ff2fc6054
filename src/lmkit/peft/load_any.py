"""`load_model_for_inference(path, adapter=None)`: a full checkpoint or an adapter folder ->
(model, tokenizer) ready for generation.

A fine-tuning run with a PEFT method writes an adapter folder, not a model; `chat`, `serve`
and `generate` take one directly. The folder is recognised by its method file
(`hub/adapter_folder.py`, which also holds `require_full_checkpoint`).

The base model is the one `adapter` is given with, else the one the folder records. LoRA and
AdaLoRA are folded into the base weights (inference then costs what the base costs); the
other methods add modules or virtual tokens that cannot be folded, so the base is wrapped
(`lmkit.infer.generate` runs such models unchanged: prompt tuning's cache counts real tokens).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit.errors import CheckpointError
from lmkit.hub.adapter_folder import (  # noqa: F401  (re-exported: the names load_any always had)
    ADAPTER_FILES,
    BASE_KEY,
    MERGEABLE,
    adapter_kind,
    is_full_checkpoint,
    method_name,
    recorded_base,
    require_full_checkpoint,
)


def _resolve_base(adapter: Path, base: str | None) -> Path | None:
    """The recorded base as an existing checkpoint directory: as written (absolute, or relative
    to the working directory), else relative to the adapter folder."""
    if base is None:
        return None
    for candidate in (Path(base), adapter / base):
        if is_full_checkpoint(candidate):
            return candidate
    return None


def _merge_hint(adapter: Path, kind: str, base: str = "BASE") -> str:
    if kind in MERGEABLE:
        return f"; or fold it into its base once: lmkit merge {base} {adapter} -o merged"
    return ""


def _has_tokenizer(adapter: str | os.PathLike | None) -> bool:
    return adapter is not None and any((Path(adapter) / n).is_file() for n in ("tokenizer.json", "tokenizer.lmkit.json"))


def _tokenizer_dir(adapter: Path | None, base: Path) -> Path:
    return adapter if _has_tokenizer(adapter) else base


def apply_adapter(model: nn.Module, adapter: str | os.PathLike, merge: bool = True) -> nn.Module:
    """Load the adapter folder `adapter` onto base `model`; LoRA / AdaLoRA are merged into the
    weights when `merge` (and the base is not quantized). Returns the model to run."""
    adapter = Path(adapter)
    kind = adapter_kind(adapter)
    if kind == "lora":
        from lmkit.peft.lora import unload_lora
        from lmkit.peft.peft_format import load_lora

        model = load_lora(model, adapter)
        quantized = getattr(model, "quantization", None) is not None
        return unload_lora(model, merge=True) if merge and not quantized else model
    if kind == "adalora":
        from lmkit.peft.adalora import load_adalora, merge_adalora

        model = load_adalora(model, adapter)
        return merge_adalora(model) if merge else model
    if kind == "method":
        from lmkit.peft.method_io import load_method

        return load_method(model, adapter)
    raise CheckpointError(f"{adapter}: not an adapter folder (no {', '.join(ADAPTER_FILES)})")


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a llama.cpp .gguf file (weights and tokenizer in one file)."""
    return str(path).lower().endswith(".gguf") and Path(path).is_file()


def load_model_for_inference(path: str | os.PathLike, adapter: str | os.PathLike | None = None,
                             dtype: torch.dtype | str | None = None, merge: bool = True,
                             quantized: bool = False) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) from a full checkpoint `path`, a full checkpoint plus an
    `adapter` folder, an adapter folder `path` that records its base model, or a `.gguf` file
    (its tokenizer read from the file; `quantized` keeps its Q4_0 / Q4_K weights as int4 kernel
    layers, see `hub.gguf_import`)."""
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    if is_gguf_file(path):
        from lmkit.hub.gguf_tokenizer import load_gguf_tokenizer

        if adapter is not None and adapter_kind(Path(adapter)) is None:
            raise CheckpointError(f"{adapter}: not an adapter folder (no {', '.join(ADAPTER_FILES)})")
        model = load_pretrained(path, dtype=dtype, quantized=quantized)
        tokenizer = load_gguf_tokenizer(path)
        if _has_tokenizer(adapter):
            tokenizer = load_tokenizer(adapter)
        if adapter is not None:
            model = apply_adapter(model, adapter, merge=merge)
        return model.eval(), tokenizer
    base, adapter = _base_and_adapter(Path(path), adapter)
    model = load_pretrained(base, dtype=dtype)
    tokenizer = load_tokenizer(_tokenizer_dir(adapter, base))
    if adapter is not None:
        model = apply_adapter(model, adapter, merge=merge)
    return model.eval(), tokenizer


def tokenizer_dir_of(path: str | os.PathLike, adapter: str | os.PathLike | None = None) -> Path | None:
    """The folder whose tokenizer (and tokenizer_config.json, chat template) `load_model_for_inference`
    uses for these arguments: the adapter folder when it carries a tokenizer, else the base
    (None for a .gguf file without such an adapter: no folder, the built-in template policy applies)."""
    if is_gguf_file(path):
        return Path(adapter) if _has_tokenizer(adapter) else None
    base, adapter = _base_and_adapter(Path(path), adapter)
    return _tokenizer_dir(adapter, base)


def _base_and_adapter(path: Path, adapter: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """(base checkpoint, adapter folder or None) of `path` [+ `adapter`], with clear errors."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a model checkpoint or an adapter folder)")
    if adapter is None and adapter_kind(path) is not None and not is_full_checkpoint(path):
        adapter, recorded = path, recorded_base(path)
        base = _resolve_base(path, recorded)
        if base is None:
            kind = adapter_kind(path)
            why = (f"records the base model {recorded!r}, which is not a checkpoint directory from here"
                   if recorded else "does not record its base model")
            raise CheckpointError(
                f"{path} is a {kind if kind != 'method' else method_name(path)} adapter folder that {why}; "
                f"give the base model and the adapter: BASE --adapter {path}" + _merge_hint(path, kind)
            )
    else:
        base = path
        if not is_full_checkpoint(base):
            raise CheckpointError(f"{base}: no config.json — not a model checkpoint (nor an adapter folder with "
                                  f"{', '.join(ADAPTER_FILES)})")
    adapter = Path(adapter) if adapter is not None else None
    if adapter is not None and adapter_kind(adapter) is None:
        raise CheckpointError(f"{adapter}: not an adapter folder (no {', '.join(ADAPTER_FILES)})")
    return base, adapter
