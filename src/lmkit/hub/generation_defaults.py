"""A checkpoint's generation_config.json: the stop ids and sampling settings its authors chose.

Llama 3.1 Instruct stops on three ids ([128001, 128008, 128009]) and Qwen3 on two, none of which
need be config.json's single `eos_token_id`; Qwen3 asks for temperature 0.6, top-p 0.95, top-k 20.
`transformers.generate` uses these as its defaults, and so do `lmkit generate`, `chat` and `serve`
(through `infer.checkpoint_defaults`): an explicit flag or request field overrides each one.

As in transformers, the sampling settings apply only with ``do_sample: true``; a file that gives
sampling settings with ``do_sample`` false or absent means greedy decoding. A file without any
sampling key (what lmkit itself writes: eos and pad ids only) leaves each command's own default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.errors import CheckpointError
from lmkit.hub.hf_config import read_json_object

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class GenerationDefaults:
    """What generation_config.json sets (None / empty: not set)."""

    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # do_sample, temperature, top_p, top_k, repetition_penalty
    max_new_tokens: int | None = None
    max_length: int | None = None

    @classmethod
    def from_dict(cls, data: dict, where: str = "generation_config.json") -> "GenerationDefaults":
        eos = data.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
        if eos is not None and not (isinstance(eos, list) and all(isinstance(i, int) and i >= 0 for i in eos)):
            raise CheckpointError(f"{where}: eos_token_id must be a token id or a list of them, got {eos!r}")
        sampling = {k: data[k] for k in SAMPLING_KEYS if data.get(k) is not None}
        if sampling:
            sampling["do_sample"] = bool(sampling.get("do_sample", False))
            for k, kind in (("temperature", (int, float)), ("top_p", (int, float)), ("top_k", int),
                            ("repetition_penalty", (int, float))):
                if k in sampling and (isinstance(sampling[k], bool) or not isinstance(sampling[k], kind)):
                    raise CheckpointError(f"{where}: {k} must be a number, got {sampling[k]!r}")
        pad = data.get("pad_token_id")
        return cls(tuple(eos or ()), pad if isinstance(pad, int) and pad >= 0 else None, sampling,
                   _positive(data, "max_new_tokens", where), _positive(data, "max_length", where))

    @property
    def greedy(self) -> bool | None:
        """True/False when the file decides greedy vs sampling; None when it says nothing."""
        return None if not self.sampling else not self.sampling["do_sample"]


def _positive(data: dict, key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def read_generation_defaults(directory: str | os.PathLike) -> GenerationDefaults:
    """The generation_config.json of a checkpoint directory (empty defaults when it has none)."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return GenerationDefaults()
    return GenerationDefaults.from_dict(read_json_object(path, f"{path}: missing"), str(path))
