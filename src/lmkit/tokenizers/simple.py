"""Whitespace (word-level) and character tokenizers with a vocabulary learned from text.

The simplest tokenizations in the notes (基于空格的分词: ``text.split()``; 字符级: one
token per character). Both keep a closed vocabulary: special tokens first (``<pad>``,
``<unk>``, ``<s>``, ``</s>`` by default), then the units seen in training, most frequent
first (ties in code-point order), cut at ``vocab_size`` and ``min_frequency``. A unit that
is not in the vocabulary becomes ``<unk>`` -- the weakness subword tokenizers fix.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import ListVocabTokenizer
from lmkit.tokenizers.json_files import corrupt_file_errors, read_json, write_json
from lmkit.tokenizers.special_tokens import encode_with_specials
from lmkit.tokenizers.text_files import iter_lines

DEFAULT_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
FORMAT_VERSION = 1


class _VocabTokenizer(ListVocabTokenizer):
    """A closed vocabulary of units; subclasses say what a unit is."""

    FORMAT = ""
    SEPARATOR = ""

    def __init__(self, vocab: Sequence[str], *, unk_token: str = "<unk>",
                 special_tokens: Sequence[str] = DEFAULT_SPECIALS, lowercase: bool = False) -> None:
        self._vocab = list(vocab)
        self._ids: dict[str, int] = {}
        for i, tok in enumerate(self._vocab):
            if not isinstance(tok, str) or not tok:
                raise TokenizerError(f"vocabulary entry #{i} is empty or not a string")
            if tok in self._ids:
                raise TokenizerError(f"token {tok!r} appears twice in the vocabulary (ids {self._ids[tok]} and {i})")
            self._ids[tok] = i
        specials = list(special_tokens)
        if unk_token not in specials:
            specials.append(unk_token)
        missing = [s for s in specials if s not in self._ids]
        if missing:
            raise TokenizerError(f"special tokens {missing} are not in the vocabulary")
        self.unk_token = unk_token
        self.unk_id = self._ids[unk_token]
        self.lowercase = bool(lowercase)
        self._specials = {s: self._ids[s] for s in specials}
        self._splitters: dict[frozenset, re.Pattern] = {}

    # ---- what a unit is ----------------------------------------------------------------
    def units(self, text: str) -> list[str]:
        raise NotImplementedError

    def _training_units(self, line: str) -> list[str]:
        return self.units(line)

    # ---- the Tokenizer interface -------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Ids of the units of `text` (``<unk>`` for units outside the vocabulary)."""
        return encode_with_specials(text, allowed_special, self._specials, self._splitters, self._encode_plain)

    def _encode_plain(self, text: str) -> list[int]:
        get, unk = self._ids.get, self.unk_id
        specials = self._specials
        # a unit spelled like a special token is not that token unless allowed
        return [unk if u in specials else get(u, unk) for u in self.units(text)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out = []
        specials = set(self._specials.values()) - {self.unk_id} if skip_special_tokens else set()
        for idx in ids:
            tok = self.id_to_token(idx)
            if idx not in specials:
                out.append(tok)
        return self.SEPARATOR.join(out)

    # ---- training ----------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
        vocab_size: int | None = None,
        *,
        min_frequency: int = 1,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        unk_token: str = "<unk>",
        lowercase: bool = False,
    ):
        """Learn the vocabulary: specials, then units by descending count (ties in
        code-point order), at most `vocab_size` entries in all, each seen `min_frequency` times."""
        specials = list(dict.fromkeys([*special_tokens, unk_token]))
        if vocab_size is not None and vocab_size <= len(specials):
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small: the {len(specials)} special tokens {specials} "
                f"need {len(specials)} ids and at least one more is needed for text"
            )
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}")
        probe = cls(specials, unk_token=unk_token, special_tokens=specials, lowercase=lowercase)
        counts: Counter = Counter()
        for line in iter_lines(texts_or_files):
            counts.update(probe._training_units(line))
        for s in specials:
            counts.pop(s, None)
        if not counts:
            raise TokenizerError(f"cannot train a {cls.__name__} on an empty corpus: no text was found in the input")
        ranked = sorted((u for u, c in counts.items() if c >= min_frequency), key=lambda u: (-counts[u], u))
        room = None if vocab_size is None else vocab_size - len(specials)
        return cls(specials + ranked[:room], unk_token=unk_token, special_tokens=specials, lowercase=lowercase)

    # ---- files -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        specials = [s for s in self._specials if s != self.unk_token] + [self.unk_token]
        return {"format": self.FORMAT, "version": FORMAT_VERSION, "unk_token": self.unk_token,
                "special_tokens": specials, "lowercase": self.lowercase, "vocab": list(self._vocab)}

    def save(self, path: str | os.PathLike) -> None:
        """Write lmkit's JSON format atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>"):
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise TokenizerError(f"{source}: not an lmkit {cls.__name__} file (no \"format\": \"{cls.FORMAT}\")")
        if data.get("version") != FORMAT_VERSION:
            raise TokenizerError(f"{source}: unsupported {cls.FORMAT} format version {data.get('version')!r}")
        with corrupt_file_errors(source, hint="re-create it"):
            return cls(list(data["vocab"]), unk_token=str(data["unk_token"]),
                       special_tokens=list(data.get("special_tokens", [])), lowercase=bool(data.get("lowercase")))

    @classmethod
    def load(cls, path: str | os.PathLike):
        return cls.from_dict(read_json(path), source=str(Path(path)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={list(self._specials)})"


class WhitespaceTokenizer(_VocabTokenizer):
    """Words are the runs of non-whitespace characters (``str.split()``); decode joins
    them with single spaces, so runs of whitespace do not survive a round trip."""

    FORMAT = "lmkit.whitespace"
    SEPARATOR = " "

    def units(self, text: str) -> list[str]:
        return (text.lower() if self.lowercase else text).split()


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode character; decode concatenates. Round trip is exact for any
    text whose characters are all in the vocabulary."""

    FORMAT = "lmkit.char"
    SEPARATOR = ""

    def units(self, text: str) -> list[str]:
        return list(text.lower() if self.lowercase else text)

    def _training_units(self, line: str) -> list[str]:
        return self.units(line) + ["\n"]  # lines arrive without their line break
