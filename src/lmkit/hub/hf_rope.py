"""RoPE settings between a Hugging Face config.json and `ModelConfig`, for every architecture.

transformers keeps them in ``rope_parameters`` (v5) or ``rope_scaling`` (v4; when present it
replaces ``rope_parameters`` whole), with ``rope_theta`` and ``partial_rotary_factor`` inside or
at the top level, and a top-level ``original_max_position_embeddings`` taking priority over the
one inside (Phi-3 always has one: 4096 by default). Reading follows those rules; writing puts
everything in both places so transformers 4 and 5 read the same thing.
"""

from __future__ import annotations

import warnings
from typing import Any

from lmkit.errors import ConfigError
from lmkit.models.config import ROPE_PARAMS, ModelConfig

KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
_WITH_ORIGINAL = ("llama3", "yarn", "longrope")
_KNOWN = {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "partial_rotary_factor"}


def rope_from_hf(hf: dict, default_theta: float, partial_default: float = 1.0, partial: bool = False,
                 original_default: int | None = None, aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The ModelConfig fields (rope_theta, rope_scaling, rope_scaling_factor, rope_original_max_seq_len,
    rope_params, partial_rotary_factor) of config.json `hf`. `partial`: the architecture rotates
    part of each head; `original_default`: the class default of a top-level
    original_max_position_embeddings (Phi-3); `aliases`: legacy kind names (Phi-3's "su")."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(legacy, dict):
        raise ConfigError("config.json: rope_parameters / rope_scaling must be objects (per-layer rope is not supported)")
    rope = dict(legacy or params)
    theta = float(rope.get("rope_theta", hf.get("rope_theta", default_theta)))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    kind = (aliases or {}).get(kind, kind)
    if kind not in KINDS:
        raise ConfigError(f"config.json: rope scaling type {kind!r} is not implemented in lmkit "
                          f"(supported: {', '.join(KINDS)})")
    fraction = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", partial_default)))
    if fraction != 1.0 and not partial:
        raise ConfigError(f"config.json: partial_rotary_factor={fraction} but this architecture rotates whole heads")
    out: dict[str, Any] = dict(rope_theta=theta, rope_scaling=None, rope_scaling_factor=1.0,
                               rope_original_max_seq_len=None, rope_params={}, partial_rotary_factor=fraction)
    if kind == "default":
        return out
    max_len = int(hf.get("max_position_embeddings", 2048))
    original = None
    if kind in _WITH_ORIGINAL:
        original = hf.get("original_max_position_embeddings", original_default)
        original = int(original if original is not None else rope.get("original_max_position_embeddings", max_len))
    factor = rope.get("factor")
    if factor is None and kind in ("yarn", "longrope"):
        factor = max_len / original
    if factor is None or not isinstance(factor, (int, float)) or (float(factor) < 1.0 and kind != "longrope"):
        raise ConfigError(f"config.json: rope scaling {kind!r} needs a factor >= 1, got {factor!r}")
    allowed = ROPE_PARAMS.get(kind, frozenset())
    ignored = sorted(set(rope) - allowed - _KNOWN)
    if ignored:
        warnings.warn(f"config.json: rope parameters {ignored} are not read by the {kind!r} scaling; ignored",
                      stacklevel=3)
    out.update(rope_scaling=kind,
               rope_scaling_factor=max(float(factor), 1.0),  # longrope: a factor <= 1 means no attention factor
               rope_original_max_seq_len=original if original != max_len else None,
               rope_params={k: v for k, v in rope.items() if k in allowed and v is not None})
    return out


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json keys of cfg's RoPE: rope_theta, rope_parameters and (when scaled) rope_scaling.
    Static NTK, which transformers has no name for, is written as the equivalent larger rope_theta."""
    theta = cfg.rope_theta
    rope: dict[str, Any] = {"rope_type": "default"}
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    if cfg.rope_scaling == "ntk":
        theta = cfg.rope_theta * cfg.rope_scaling_factor ** (dim / (dim - 2))
    elif cfg.rope_scaling is not None:
        if cfg.rope_scaling == "dynamic" and cfg.rope_original_max_seq_len not in (None, cfg.max_seq_len):
            raise ConfigError("dynamic RoPE in transformers uses max_position_embeddings as the trained length; "
                              "rope_original_max_seq_len must be None or equal max_seq_len")
        rope = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_scaling_factor}
        if cfg.rope_scaling in _WITH_ORIGINAL:
            rope["original_max_position_embeddings"] = cfg.rope_original_max_seq_len or cfg.max_seq_len
        rope.update(cfg.rope_params)
    rope["rope_theta"] = theta
    if cfg.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
    out: dict[str, Any] = {"rope_theta": theta, "rope_parameters": rope}
    if cfg.rope_scaling not in (None, "ntk"):
        out["rope_scaling"] = dict(rope)
    return out
