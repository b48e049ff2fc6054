"""Gopher's repetition rules (Rae et al. 2021, table A1), with datatrove's thresholds.

A document is dropped when any of these exceeds its limit (strictly; at the limit it stays):

=====================================  =====  =========================================
duplicate paragraphs / paragraphs       0.30  paragraphs split at two or more newlines
chars in duplicate paragraphs / chars   0.20  a repeat counts, its first occurrence not
duplicate lines / lines                 0.30  lines split at runs of newlines
chars in duplicate lines / chars        0.20
top 2-, 3-, 4-gram chars / chars        0.20, 0.18, 0.16  (n-gram = words joined by spaces,
                                              times its count)
duplicated 5..10-gram chars / chars     0.15 .. 0.10  (words joined without spaces; after a
                                              repeat the scan jumps past it)
=====================================  =====  =========================================

"chars" is the length of the whole text. Words are `split_words` tokens, so Chinese text is
measured in Han characters (its n-grams are character n-grams).
"""

from __future__ import annotations

import re
from collections import Counter

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterResult
from lmkit.data.filters.words import split_words

TOP_N_GRAMS = ((2, 0.2), (3, 0.18), (4, 0.16))
DUP_N_GRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, their characters): every occurrence after the first counts."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram: len(" ".join(gram)) x its count."""
    grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams seen before, scanning left to right and skipping past each repeat."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


class GopherRepetitionFilter(DocumentFilter):
    """Gopher repetition heuristics; ``None`` (or an empty tuple) switches a rule off."""

    name = "gopher_repetition"

    def __init__(self, dup_line_frac: float | None = 0.3, dup_para_frac: float | None = 0.3,
                 dup_line_char_frac: float | None = 0.2, dup_para_char_frac: float | None = 0.2,
                 top_n_grams: tuple = TOP_N_GRAMS, dup_n_grams: tuple = DUP_N_GRAMS) -> None:
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams, self.dup_n_grams = tuple(top_n_grams), tuple(dup_n_grams)

    def apply(self, text: str) -> FilterResult:
        if not text:
            return Dropped("empty")
        size = len(text)
        paragraphs = _PARAGRAPHS.split(text.strip())
        count, chars = duplicates(paragraphs)
        if self.dup_para_frac is not None and count / len(paragraphs) > self.dup_para_frac:
            return Dropped("dup_para_frac")
        if self.dup_para_char_frac is not None and chars / size > self.dup_para_char_frac:
            return Dropped("dup_para_char_frac")
        lines = _LINES.split(text)
        count, chars = duplicates(lines)
        if self.dup_line_frac is not None and count / len(lines) > self.dup_line_frac:
            return Dropped("dup_line_frac")
        if self.dup_line_char_frac is not None and chars / size > self.dup_line_char_frac:
            return Dropped("dup_line_char_frac")
        words = split_words(text)
        for n, limit in self.top_n_grams:
            if top_ngram_chars(words, n) / size > limit:
                return Dropped(f"top_{n}_gram")
        for n, limit in self.dup_n_grams:
            if duplicated_ngram_chars(words, n) / size > limit:
                return Dropped(f"duplicated_{n}_n_grams")
        return text
