"""Words as the quality rules count them, for English, code and Chinese alike.

The rules of Gopher and C4 count words. datatrove splits English with spaCy's tokenizer, which
splits text at whitespace and then peels punctuation off the front and back of each piece
("(see" -> "(", "see"; "end." -> "end", "."), keeping inner punctuation ("x.append(3" stays
one word) and a run like "..." whole. `split_words` does the same without spaCy: each
whitespace piece loses its leading and trailing symbols as tokens of their own (a run of one
run of dots, "...", is one token), a piece made only of symbols is one
token, and a Chinese (Han) character is a word on its own, so the rules work on Chinese text
without a segmenter (the "Chinese-aware variant" of every word-counting rule).
"""

from __future__ import annotations

import re
import unicodedata

from lmkit.data.shingles import _HAN

HAN_CHAR = re.compile(f"[{_HAN}]")
HAN_SPLIT = re.compile(f"[{_HAN}]|[^{_HAN}]+")


def _peel(piece: str, out: list[str]) -> None:
    """Append the tokens of one whitespace piece without Han characters."""
    if all(is_symbol_char(c) for c in piece):
        out.append(piece)
        return
    start, end = 0, len(piece)
    head: list[str] = []
    while start < end and is_symbol_char(piece[start]):
        run = start + 1
        while run < end and piece[start] == "." and piece[run] == ".":
            run += 1
        head.append(piece[start:run])
        start = run
    tail: list[str] = []
    while end > start and is_symbol_char(piece[end - 1]):
        run = end - 1
        while run > start and piece[end - 1] == "." and piece[run - 1] == ".":
            run -= 1
        tail.append(piece[run:end])
        end = run
    out.extend(head)
    out.append(piece[start:end])
    out.extend(reversed(tail))


def split_words(text: str) -> list[str]:
    """Word and symbol tokens of `text` (spaCy-like; Han characters one by one)."""
    out: list[str] = []
    for piece in text.split():
        if HAN_CHAR.search(piece) is None:
            _peel(piece, out)
            continue
        for part in HAN_SPLIT.findall(piece):
            if HAN_CHAR.match(part):
                out.append(part)
            else:
                _peel(part, out)
    return out


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
