"""Words as the quality rules count them, for English, code and Chinese alike.

The rules of Gopher and C4 count words. datatrove splits English with spaCy, which puts
punctuation into tokens of its own ("end." -> "end", "."); we do the same with one regular
expression: a run of letters/digits is a word, a run of other visible characters is a
(symbol) word, and a Chinese (Han) character is a word on its own, so the rules work on
Chinese text without a segmenter (the "Chinese-aware variant" of every word-counting rule).
"""

from __future__ import annotations

import re
import unicodedata

from lmkit.data.shingles import _HAN

HAN_CHAR = re.compile(f"[{_HAN}]")
WORD_SPLIT = re.compile(f"[{_HAN}]|[^\\W_{_HAN}]+(?:['’][^\\W_{_HAN}]+)*|[^\\w\\s{_HAN}]+|_+")


def split_words(text: str) -> list[str]:
    """Word and symbol tokens of `text` (Han characters one by one)."""
    return WORD_SPLIT.findall(text)


def is_symbol_char(ch: str) -> bool:
    """Punctuation, symbols and control characters: what a "symbol word" is made of."""
    return unicodedata.category(ch)[0] in "PSCZ"


def is_symbol_word(word: str) -> bool:
    """A token made only of punctuation/symbols (datatrove: every char in PUNCTUATION_SET)."""
    return all(is_symbol_char(c) for c in word)


def han_fraction(text: str) -> float:
    """Share of the non-space characters that are Han characters (picks the Chinese variant)."""
    visible = sum(1 for c in text if not c.isspace())
    return len(HAN_CHAR.findall(text)) / visible if visible else 0.0
