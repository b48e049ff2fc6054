"""The config.json and state-dict plumbing every architecture module (arch_*.py) shares.

Reading: a JSON object from a file, required keys, the eos id (a list of ids is kept in ``extra`` and the first one is
used), and one message when transformers' fields contradict each other. Writing: the list
of settings a checkpoint format cannot express, the eos id, and leaving out a tied LM head.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lmkit.errors import CheckpointError, ConfigError
from lmkit.models.config import ModelConfig


def read_json_object(path: Path, missing: str) -> dict:
    """The JSON object in `path` (a checkpoint's config.json, an adapter_config.json, ...);
    a CheckpointError saying `missing` when there is no such file, or naming the file when it
    is not a JSON object."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return data


def required(hf: dict, key: str, model_type: str | None) -> Any:
    """``hf[key]``; a missing or null key is a ConfigError naming `model_type`'s config.json."""
    if key not in hf or hf[key] is None:
        raise ConfigError(f"config.json ({model_type}): required key {key!r} is missing")
    return hf[key]


def eos_and_extra(hf: dict, consumed: set[str], default: Any = None) -> tuple[Any, dict]:
    """(eos id, the keys of `hf` not in `consumed`). A list of eos ids is kept whole in the
    extra keys (so it is written back as it was) and its first id is the model's eos."""
    eos = hf.get("eos_token_id", default)
    extra = {k: v for k, v in hf.items() if k not in consumed}
    if isinstance(eos, list):
        extra["eos_token_id"] = eos
        eos = eos[0] if eos else None
    return eos, extra


def eos_to_hf(hf: dict, cfg: ModelConfig) -> None:
    """Write the eos id, unless the config's extra keys already carry a list of them."""
    if not isinstance(cfg.extra.get("eos_token_id"), list):
        hf["eos_token_id"] = cfg.eos_token_id


@contextmanager
def config_contradictions(model_type: str | None) -> Iterator[None]:
    """Inside: building a ModelConfig from config.json; its validation errors name the file."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"config.json ({model_type}) contradicts itself: {exc}") from exc


def mismatches(cfg: ModelConfig, expect: dict[str, Any]) -> list[str]:
    """``"field=value (needs wanted)"`` for every field of `cfg` that differs from `expect`."""
    return [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in expect.items() if getattr(cfg, k) != v]


def check_writable(problems: list[str], model_type: str) -> None:
    if problems:
        raise ConfigError(f"this model cannot be written as a {model_type} checkpoint: " + "; ".join(problems))


def without_tied_head(sd: dict, cfg: ModelConfig, head: str = "lm_head.weight") -> dict:
    """`sd` without the LM head weight when it is tied to the embedding (not saved twice)."""
    if not cfg.tie_embeddings:
        return sd
    return {k: v for k, v in sd.items() if k != head}


def drop_tied_head(out: dict, cfg: ModelConfig, head: str = "lm_head.weight") -> dict:
    """A loaded state: a tied head's own copy is dropped (the model reuses the embedding)."""
    if cfg.tie_embeddings and "embed_tokens.weight" in out:
        out.pop(head, None)
    return out
