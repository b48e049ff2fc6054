"""Quantized checkpoints: `model.safetensors` (lmkit parameter names, quantized buffers as
stored: int8 / packed uint8 codes, fp32 constants) + `quantization.json`:

    {"format": "lmkit.quant", "version": 1,
     "method": "nf4", "bits": 4, "block_size": 64, "double_quant": true,   (method settings)
     "skip": ["lm_head"], "modules": ["layers.0.self_attn.q_proj", ...],    (what was quantized)
     "arch": {"class": "DecoderLM", "model_type": "llama", "config": {ModelConfig fields}}}

Loading builds the architecture from the saved config (or checks a model you pass against
it: a checkpoint made for another architecture is refused with the differing fields named),
swaps the listed Linears for empty quantized modules of the right shapes and loads every
tensor strictly. Files are written to a temporary directory and renamed into place, the
JSON last, so an interrupted save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit.atomic import recover_directory, replace_directory
from lmkit.checksums import CHECKSUMS_FILE, write_checksums
from lmkit.errors import CheckpointError, LmkitError
from lmkit.models.config import ModelConfig
from lmkit.models.module_tree import replace_module

FORMAT = "lmkit.quant"
VERSION = 1
QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"


def _dedup_state(model: nn.Module) -> dict[str, torch.Tensor]:
    seen: dict[int, str] = {}
    out = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in seen:  # tied (lm_head = embed_tokens): the model re-ties on construction
            continue
        seen[id(v)] = k
        out[k] = v.detach().cpu().contiguous()
    return out


def save_quantized(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write a model returned by `quantize_model` to `directory` (other files there are kept)."""
    from safetensors.torch import save_file

    q = getattr(model, "quantization", None)
    cfg = getattr(model, "config", None)
    if not isinstance(q, dict):
        raise CheckpointError("save_quantized: the model is not quantized (run quantize_model first)")
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError("save_quantized: the model has no lmkit ModelConfig (model.config)")
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, **q,
                            "arch": {"class": type(model).__name__, "model_type": cfg.model_type,
                                     "config": cfg.to_dict()}}
    directory = Path(directory)
    recover_directory(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(_dedup_state(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "lmkit": FORMAT})
        (tmp / QUANT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if directory.is_dir():  # other files there (tokenizer, README) are kept
            for f in directory.iterdir():
                if f.is_file() and not (tmp / f.name).exists() and f.name != CHECKSUMS_FILE:
                    shutil.copy2(f, tmp / f.name)
        write_checksums(tmp)
        os.chmod(tmp, 0o755)
        replace_directory(tmp, directory)  # an interruption leaves the previous checkpoint whole
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_quant_config(directory: str | os.PathLike) -> dict[str, Any]:
    recover_directory(directory)
    path = Path(directory) / QUANT_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: no {QUANT_FILE} — not a quantized lmkit checkpoint "
                              "(make one with `lmkit quantize` or save_quantized)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} file")
    if not isinstance(meta.get("version", 0), int):
        raise CheckpointError(f"{path}: \"version\" must be an integer, got {meta['version']!r}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: format version {meta['version']} is newer than this lmkit reads ({VERSION})")
    return meta


def _check_arch(model: nn.Module, meta: dict[str, Any], directory) -> None:
    arch = meta.get("arch", {})
    want_cls = arch.get("class")
    if want_cls != type(model).__name__:
        raise CheckpointError(
            f"{directory}: quantized checkpoint is for a {want_cls} ({arch.get('model_type') or 'lmkit'}), "
            f"not a {type(model).__name__}; load it with load_quantized(directory) without a model"
        )
    saved = arch.get("config", {})
    own = model.config.to_dict() if isinstance(getattr(model, "config", None), ModelConfig) else {}
    diff = [f"{k}: checkpoint {saved[k]!r}, model {own.get(k)!r}" for k in sorted(saved)
            if k not in ("extra", "dropout", "attn_dropout") and own.get(k) != saved[k]]
    if diff:
        raise CheckpointError(
            f"{directory}: quantized checkpoint does not fit this model's architecture:\n  " + "\n  ".join(diff)
        )


def _check_size(cfg: ModelConfig, weights: Path) -> None:
    """Refuse a config that cannot fit its weights file before building (and allocating) the model:
    even at 4 bits a parameter takes half a byte, and every layer or expert takes some bytes."""
    size = weights.stat().st_size
    for name in ("n_layers", "n_decoder_layers", "n_experts"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > size // 16:
            raise CheckpointError(f"{weights.parent / QUANT_FILE}: {name}={value} cannot fit {weights} ({size} bytes)")
    from lmkit.models.build import build_model

    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(cfg).parameters())
    if n // 4 > size:  # 2 bits a parameter would already be below every method lmkit has
        raise CheckpointError(f"{weights.parent / QUANT_FILE}: a model of {n:,} parameters cannot fit "
                              f"{weights} ({size:,} bytes)")


def load_quantized(directory: str | os.PathLike, model: nn.Module | None = None,
                   device: str | torch.device | None = None) -> nn.Module:
    """A quantized model from `directory` (built from its config, or loaded into `model`)."""
    meta = read_quant_config(directory)
    where = Path(directory) / QUANT_FILE
    path = Path(directory) / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        return _load_quantized(directory, meta, model, device, path)
    except CheckpointError:
        raise
    except (LmkitError, KeyError, TypeError, ValueError, AttributeError, OverflowError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{where}: does not describe a loadable model ({type(exc).__name__}: {exc})") from exc


def _load_quantized(directory, meta: dict[str, Any], model: nn.Module | None, device, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    from lmkit.models.build import build_model
    from lmkit.quant.quantize_model import empty_quantized

    if model is None:
        try:
            cfg = ModelConfig.from_dict(meta["arch"]["config"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{directory}: {QUANT_FILE} has no architecture config") from exc
        _check_size(cfg, path)
        model = build_model(cfg)
    else:
        _check_arch(model, meta, directory)
    method = meta.get("method")
    for name in meta.get("modules", []):
        try:
            lin = model.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(f"{directory}: quantized module {name!r} does not exist in this model") from exc
        if not isinstance(lin, nn.Linear):
            raise CheckpointError(f"{directory}: quantized module {name!r} is a {type(lin).__name__} here, "
                                  "not an nn.Linear")
        replace_module(model, name, empty_quantized(lin.in_features, lin.out_features, lin.bias is not None,
                                                 method, meta))
    try:
        sd = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
    own = model.state_dict(keep_vars=True)
    ids: dict[int, str] = {}
    for k, v in own.items():
        if id(v) in ids and k not in sd:  # tied alias
            sd[k] = sd[ids[id(v)]]
        ids.setdefault(id(v), k)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(sd[k].shape)}"
              for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("wrong shapes:\n  " + "\n  ".join(shapes[:20]))
        if missing:
            parts.append("missing:\n  " + "\n  ".join(missing[:20]))
        if unexpected:
            parts.append("unexpected:\n  " + "\n  ".join(unexpected[:20]))
        raise CheckpointError(f"{path} does not fit the model: " + "\n".join(parts))
    model.load_state_dict(sd, strict=True)
    model.quantization = {k: v for k, v in meta.items() if k not in ("format", "version", "arch")}
    if device is not None:
        model = model.to(device)
    return model.eval()
