"""Hugging Face ``tokenizer.json`` import and export.

``load_hf_json(path)`` / ``tokenizer_from_hf_dict(data)`` pick a reader by
``data["model"]["type"]``; ``save_hf_json(tok, path)`` picks a writer by the tokenizer's
class. Each model type reads (and writes) its own form: ``BPETokenizer.from_hf_dict`` /
``to_hf_dict``, ``UnigramTokenizer.from_hf_dict``, ``WordPieceTokenizer.from_hf_dict``; this
module only dispatches (``_READERS`` / ``_writer_for``).

Byte-level BPE forms understood:

* GPT-2 / RoBERTa: ``pre_tokenizer = ByteLevel(add_prefix_space, use_regex)``;
* Llama-3 / Qwen2: ``Sequence[Split(Regex, "Isolated"), ByteLevel(use_regex=False)]``
  (optionally a ``Digits`` step, an NFC-style normalizer, ``ignore_merges``);
* ``decoder = ByteLevel``; ``added_tokens`` with their flags; merges as ``"a b"`` strings
  (old files) or ``["a", "b"]`` pairs (tokenizers >= 0.20).

A BPE file with no ByteLevel step is SentencePiece-style (Llama 2, Gemma, Phi-3: byte
fallback, Metaspace or Replace/Prepend normalizers) and is read by
``SentencePieceBPETokenizer.from_hf_dict``.

The post-processor (e.g. a BOS template) is kept and written back; ``encode`` applies it
only with ``add_special_tokens=True`` (chat templates usually write the BOS themselves).
"""

from __future__ import annotations

import json
import os
from typing import Callable

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.json_files import read_json

# ---- entry points ---------------------------------------------------------------------------
def load_hf_json(path: str | os.PathLike) -> Tokenizer:
    """Read a ``tokenizer.json`` into the lmkit tokenizer class for its model type."""
    return tokenizer_from_hf_dict(read_json(path), source=str(path))


def tokenizer_from_hf_dict(data: dict, source: str = "<tokenizer.json>") -> Tokenizer:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{source}: corrupt tokenizer.json (no \"model\" object)")
    kind = data["model"].get("type") or ("BPE" if "merges" in data["model"] else None)
    reader = _READERS.get(kind)
    if reader is None:
        raise TokenizerError(
            f"{source}: tokenizer.json model type {kind!r} is not supported "
            f"(supported: {', '.join(sorted(_READERS))})"
        )
    return reader(data, source)  # each reader prefixes its errors with `source` (json_files.hf_json_errors)


def save_hf_json(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write `tok` as a ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file`` loads."""
    atomic_write_text(path, json.dumps(tokenizer_to_hf_dict(tok), ensure_ascii=False, indent=2) + "\n")


def tokenizer_to_hf_dict(tok: Tokenizer) -> dict:
    return _writer_for(tok)()


def _writer_for(tok: Tokenizer) -> Callable[[], dict]:
    from lmkit.tokenizers.sentencepiece_bpe import SentencePieceBPETokenizer

    if isinstance(tok, (BPETokenizer, SentencePieceBPETokenizer)):
        return tok.to_hf_dict
    raise TokenizerError(f"no tokenizer.json writer for {type(tok).__name__}")


def is_byte_level(data: dict) -> bool:
    """True when a BPE ``tokenizer.json`` works on bytes (a ByteLevel pre-tokenizer or decoder)."""
    pre = data.get("pre_tokenizer") or {}
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    return any(s.get("type") == "ByteLevel" for s in steps) or (data.get("decoder") or {}).get("type") == "ByteLevel"


def _bpe_from_hf(data: dict, source: str) -> Tokenizer:
    """Byte-level BPE (GPT-2, Llama 3, Qwen2) or SentencePiece-style BPE (Llama 2, Gemma, Phi-3)."""
    if is_byte_level(data):
        return BPETokenizer.from_hf_dict(data, source)
    from lmkit.tokenizers.sentencepiece_bpe import SentencePieceBPETokenizer

    return SentencePieceBPETokenizer.from_hf_dict(data, source)


def _unigram_from_hf(data: dict, source: str) -> Tokenizer:
    from lmkit.tokenizers.unigram import UnigramTokenizer

    return UnigramTokenizer.from_hf_dict(data, source)


def _wordpiece_from_hf(data: dict, source: str) -> Tokenizer:
    from lmkit.tokenizers.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer.from_hf_dict(data, source)


#: model type -> reader(data, source)
_READERS: dict[str, Callable[[dict, str], Tokenizer]] = {
    "BPE": _bpe_from_hf, "Unigram": _unigram_from_hf, "WordPiece": _wordpiece_from_hf,
}
