"""A CLIP model folder as `lmkit clip train` writes it: a transformers `CLIPModel` folder
(config.json with model_type "clip" + safetensors) and the caption tokenizer beside it
(`tokenizer.lmkit.json`, a word-level tokenizer, or a `tokenizer.json`).

`lmkit clip classify` and `lmkit serve` (image and text embeddings) both load it from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmkit.errors import CheckpointError

TOKENIZER_FILE = "tokenizer.lmkit.json"


def is_clip_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a directory whose config.json says model_type "clip"."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clip"
    except (ValueError, AttributeError, OSError):
        return False


def load_clip_folder(path: str | os.PathLike):
    """(CLIP in eval mode, its caption tokenizer) from a CLIP folder."""
    from lmkit.vision.clip_hub import load_clip

    path = Path(path)
    if (path / TOKENIZER_FILE).is_file():
        from lmkit.tokenizers.simple import WhitespaceTokenizer

        tok = WhitespaceTokenizer.load(path / TOKENIZER_FILE)
    elif (path / "tokenizer.json").is_file():
        from lmkit.tokenizers.loading import load_tokenizer

        tok = load_tokenizer(path)
    else:
        raise CheckpointError(f"{path}: no {TOKENIZER_FILE} (the caption tokenizer `lmkit clip train` writes) "
                              f"and no tokenizer.json")
    return load_clip(path).eval(), tok
