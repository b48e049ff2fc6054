"""The word dictionary for Chinese segmentation, stored as a prefix trie.

The trie is kept in its hashed form (as jieba does): every prefix of every word is a key,
mapped to the word's frequency, or 0 when the prefix is not itself a word. "Can a word
continue with this character?" is then one dict lookup instead of a walk down node objects,
which is what makes a pure-Python segmenter fast. A second map holds the reversed words'
prefixes for backward maximum matching.

File format: one entry per line, ``word [freq [tag]]`` separated by whitespace — the format
of jieba's dict.txt and most Chinese dictionaries. A missing frequency counts as 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from lmkit.errors import TokenizerError


class Dictionary:
    def __init__(self, words: Iterable[tuple[str, int]] = ()) -> None:
        self.freq: dict[str, int] = {}  # word or prefix -> frequency (0: prefix only)
        self.tags: dict[str, str] = {}
        self.total = 0
        self.max_word_len = 1
        self._reverse: dict[str, int] | None = None
        self._logp: dict[str, float] | None = None
        for word, f in words:
            self.add_word(word, f)

    # ---- building ---------------------------------------------------------------------
    def add_word(self, word: str, freq: int = 1, tag: str | None = None) -> None:
        if not word:
            raise TokenizerError("cannot add an empty word to the dictionary")
        if freq < 0:
            raise TokenizerError(f"word {word!r}: frequency must be >= 0, got {freq}")
        old = self.freq.get(word, 0)
        self.total += freq - old
        self.freq[word] = freq
        if tag:
            self.tags[word] = tag
        for i in range(1, len(word)):
            self.freq.setdefault(word[:i], 0)
        self.max_word_len = max(self.max_word_len, len(word))
        self._reverse = self._logp = None

    @classmethod
    def load(cls, path: str | os.PathLike, user_paths: Iterable[str | os.PathLike] = ()) -> "Dictionary":
        d = cls()
        d.load_file(path)
        for p in user_paths:
            d.load_file(p)
        return d

    def load_file(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"cannot read dictionary {path}: {exc.strerror}") from exc
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{path}: not UTF-8 (invalid byte at offset {exc.start})") from exc
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            word, freq, tag = parts[0], 1, None
            if len(parts) > 1:
                try:
                    freq = int(parts[1])
                except ValueError:
                    raise TokenizerError(
                        f"{path}:{lineno}: frequency {parts[1]!r} is not an integer (format: word [freq [tag]])"
                    ) from None
            if len(parts) > 2:
                tag = parts[2]
            self.add_word(word, freq, tag)

    # ---- queries ------------------------------------------------------------------------
    def __contains__(self, word: str) -> bool:
        return self.freq.get(word, 0) > 0

    def __len__(self) -> int:
        return sum(1 for f in self.freq.values() if f > 0)

    @property
    def reverse(self) -> dict[str, int]:
        """Prefixes of reversed words (for backward matching), built on first use."""
        if self._reverse is None:
            rev: dict[str, int] = {}
            for w, f in self.freq.items():
                if f > 0:
                    r = w[::-1]
                    rev[r] = f
                    for i in range(1, len(r)):
                        rev.setdefault(r[:i], 0)
            self._reverse = rev
        return self._reverse

    @property
    def logp(self) -> dict[str, float]:
        """log P(word) = log(freq / total) for every word with freq > 0."""
        if self._logp is None:
            if self.total <= 0:
                raise TokenizerError("the dictionary has no word with a positive frequency")
            lt = math.log(self.total)
            self._logp = {w: math.log(f) - lt for w, f in self.freq.items() if f > 0}
        return self._logp


def jieba_dictionary_path() -> Path:
    """The dict.txt that ships inside the jieba package (for tests and as a CLI default)."""
    try:
        import jieba
    except ImportError as exc:
        raise TokenizerError("no dictionary given and jieba (which ships one) is not installed") from exc
    return Path(jieba.__file__).parent / "dict.txt"
