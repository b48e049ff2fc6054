"""Shingles: the set of overlapping n-grams a document is compared by (MinHash, decontamination).

A document is normalised (`normalize_text`: NFKC, case-folded, whitespace collapsed), cut into
units (words, or characters), and every run of `n` consecutive units is one shingle. Each
shingle is reduced to one 64-bit number, so a set of shingles is an array of ``uint64``:

* every unit is hashed once (a word by xxhash when it is installed, else by blake2b, through a
  cache, so a frequent word costs one dict lookup; a character is its code point mixed by the
  splitmix64 finalizer);
* the `n` unit hashes of a shingle are combined by a polynomial in ``uint64`` arithmetic and a
  final avalanche, vectorised over every shingle of a whole batch of documents at once.

Two shingles get the same number only when their units are the same (up to 64-bit collisions,
~n^2/2^65 for n shingles), so the Jaccard similarity of two documents' hash sets is the
Jaccard similarity of their shingle sets. A document with fewer than `n` units has one shingle,
all of its units (text-dedup does the same), so a short line still has a signature.

Words are Unicode word characters; a Chinese (Han) character is a word on its own, so word
n-grams also work on Chinese text without a segmenter.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Sequence

import numpy as np

from lmkit.errors import ConfigError

UNITS = ("word", "char")
_HAN = "\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
#: a Han character alone, or a run of other word characters (stdlib `re`: ~3x faster than `regex`)
WORD_PATTERN = re.compile(f"[{_HAN}]|[^\\W{_HAN}]+")
_WHITESPACE = re.compile(r"\s+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial that combines unit hashes


def normalize_text(text: str) -> str:
    """NFKC, case-folded, runs of whitespace made one space, stripped: what "the same text" means."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    """The word units of already normalised text (punctuation dropped, Han characters one by one)."""
    return WORD_PATTERN.findall(text)


def fmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 / MurmurHash3 64-bit finalizer: a bijection that spreads every input bit."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _hash_word_fallback(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


try:  # xxhash is ~5x faster than blake2b on short strings; both give a fixed 64-bit hash
    from xxhash import xxh3_64_intdigest

    def _hash_word(word: str) -> int:
        return xxh3_64_intdigest(word.encode("utf-8"))
except ImportError:  # pragma: no cover - depends on the environment
    _hash_word = _hash_word_fallback


class _WordHashes(dict):
    """word -> its 64-bit hash, computed on first sight (``map(cache.__getitem__, ...)`` stays in C)."""

    def __missing__(self, word: str) -> int:
        value = self[word] = _hash_word(word)
        return value


class Shingler:
    """Turn documents into arrays of shingle hashes: ``(hashes, offsets)`` for a batch.

    `unit` is "word" or "char"; `n` is the number of units per shingle (5 by default: word
    5-grams, as in the Gopher and text-dedup pipelines). `normalize` applies `normalize_text`.
    """

    def __init__(self, n: int = 5, unit: str = "word", normalize: bool = True, cache_limit: int = 500_000) -> None:
        if unit not in UNITS:
            raise ConfigError(f"unit must be one of {UNITS}, got {unit!r}")
        if n < 1:
            raise ConfigError(f"n (the n-gram size) must be at least 1, got {n}")
        self.n, self.unit, self.normalize = n, unit, normalize
        self.cache_limit = cache_limit
        self._cache = _WordHashes()

    def units(self, text: str) -> list[str]:
        """The units of one document (after normalisation), for readers and tests."""
        text = normalize_text(text) if self.normalize else text
        return words(text) if self.unit == "word" else list(text)

    def shingle_strings(self, text: str) -> set[str]:
        """The shingles of one document as strings (units joined by a space): a slow, plain reference."""
        units = self.units(text)
        if not units:
            return set()
        m = min(self.n, len(units))
        return {" ".join(units[i : i + m]) for i in range(len(units) - m + 1)}

    def unit_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 hash of every unit of every document, int64 start offsets with a final end)."""
        if self.normalize:
            texts = [normalize_text(t) for t in texts]
        lengths = np.zeros(len(texts) + 1, dtype=np.int64)
        if self.unit == "char":
            joined = "".join(texts)
            lengths[1:] = [len(t) for t in texts]
            codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            return fmix64(codes + _MIX), np.cumsum(lengths)
        if len(self._cache) > self.cache_limit:  # a bound on memory for corpora with huge vocabularies
            self._cache.clear()
        findall, get = WORD_PATTERN.findall, self._cache.__getitem__
        flat: list[int] = []
        for i, text in enumerate(texts, 1):
            found = findall(text)
            lengths[i] = len(found)
            flat.extend(map(get, found))
        return np.array(flat, dtype=np.uint64), np.cumsum(lengths)

    def hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The shingle hashes of each document of `texts`, concatenated: ``(hashes, offsets)``.

        Document ``i`` owns ``hashes[offsets[i]:offsets[i+1]]`` (possibly with repeats: a
        repeated shingle changes nothing for MinHash or set overlap). An empty document owns none.
        """
        units, starts = self.unit_hashes(texts)
        return ngram_hashes(units, starts, self.n)

    def hash_sets(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The sorted, distinct shingle hashes of each document (for set operations)."""
        hashes, offsets = self.hashes(texts)
        return [np.unique(hashes[offsets[i] : offsets[i + 1]]) for i in range(len(texts))]


def ngram_hashes(units: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Combine unit hashes into n-gram hashes within each document (vectorised over the batch).

    `units` holds every document's unit hashes back to back, document ``i`` from
    ``starts[i]`` to ``starts[i+1]``. A document shorter than `n` units gives one n-gram of
    all its units; an empty one gives none. Returns ``(hashes, offsets)`` like `Shingler.hashes`.
    """
    lengths = np.diff(starts)
    width = np.minimum(lengths, n)  # units per shingle of each document
    counts = np.where(lengths > 0, lengths - width + 1, 0)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint64), offsets
    doc = np.repeat(np.arange(len(lengths)), counts)
    first = starts[:-1][doc] + (np.arange(total) - offsets[:-1][doc])  # first unit of each shingle
    size = width[doc]
    h = units[first].copy()
    last = len(units) - 1
    with np.errstate(over="ignore"):
        if (size == n).all():
            for k in range(1, n):
                h = h * _MIX + units[first + k]
        else:
            for k in range(1, n):
                nxt = units[np.minimum(first + k, last)]
                h = np.where(k < size, h * _MIX + nxt, h)
        h = fmix64(h ^ size.astype(np.uint64))  # the width is part of the shingle's identity
    return h, offsets
