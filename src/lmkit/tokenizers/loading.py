"""`load_tokenizer(path)`: open any tokenizer file lmkit understands, whatever its algorithm.

Dispatch, in order:
  directory           its tokenizer.json, else a SentencePiece *.model, else BERT's vocab.txt
  JSON with "format"  lmkit's own files: lmkit.bpe / lmkit.unigram / lmkit.wordpiece /
                      lmkit.whitespace / lmkit.char
  JSON with "model"   a Hugging Face tokenizer.json (BPE, Unigram or WordPiece model)
  other binary file   a SentencePiece .model
  other text file     a WordPiece vocab.txt (one token per line)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import Tokenizer


def _lmkit_class(fmt: str):
    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.tokenizers.simple import CharTokenizer, WhitespaceTokenizer
    from lmkit.tokenizers.unigram import UnigramTokenizer
    from lmkit.tokenizers.wordpiece import WordPieceTokenizer

    classes = {"lmkit.bpe": BPETokenizer, "lmkit.unigram": UnigramTokenizer, "lmkit.wordpiece": WordPieceTokenizer,
               "lmkit.whitespace": WhitespaceTokenizer, "lmkit.char": CharTokenizer}
    if fmt not in classes:
        raise TokenizerError(f"unknown lmkit tokenizer format {fmt!r}; known: {sorted(classes)}")
    return classes[fmt]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json",):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        models = sorted(path.glob("*.model"))
        if models:
            return load_tokenizer(models[0])
        if (path / "vocab.txt").is_file():
            from lmkit.tokenizers.wordpiece import WordPieceTokenizer

            return WordPieceTokenizer.from_pretrained_dir(path)
        raise TokenizerError(f"{path}: no tokenizer.json, *.model or vocab.txt in this directory")
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
    raw = path.read_bytes()
    head = raw.lstrip()[:1]
    if head == b"{":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{path}: corrupt tokenizer file (invalid JSON: {exc})") from None
        from lmkit.tokenizers.hf_json import tokenizer_from_hf_dict
        from lmkit.tokenizers.json_files import CORRUPT_ERRORS

        try:
            if isinstance(data, dict) and "format" in data:
                return _lmkit_class(data["format"]).load(path)
            return tokenizer_from_hf_dict(data, source=str(path))
        except TokenizerError as exc:
            if str(path) in str(exc):
                raise
            raise TokenizerError(f"{path}: {exc}") from exc
        except CORRUPT_ERRORS as exc:
            raise TokenizerError(f"{path}: corrupt tokenizer file ({type(exc).__name__}: {exc})") from exc
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        from lmkit.tokenizers.unigram import UnigramTokenizer

        return UnigramTokenizer.from_sentencepiece(path)
    from lmkit.tokenizers.wordpiece import WordPieceTokenizer

    return WordPieceTokenizer.from_vocab_file(path)
