"""BERT's BasicTokenizer: text cleaning, lower-casing, accent stripping, CJK and
punctuation splitting -- the step before WordPiece.

It follows Hugging Face ``tokenizers``' ``BertNormalizer`` + ``BertPreTokenizer`` (what
``BertTokenizerFast`` runs), in this order:

1. clean text: drop NUL, U+FFFD and control/format/unassigned/private-use characters
   (Unicode category C*, except tab, newline, carriage return); turn every whitespace
   character (tab, newline, CR and the Unicode White_Space property) into a space;
2. put spaces around every CJK ideograph (the CJK Unified Ideographs blocks and their
   extensions and compatibility blocks), so each becomes a word;
3. strip accents (NFD, then drop nonspacing marks) -- by default whenever lower-casing;
4. lower-case character by character (no final-sigma rule, like Rust's ``to_lowercase``);
5. split on whitespace, then isolate every punctuation character (Unicode P* or ASCII
   punctuation, which includes ``$+<=>^`|~``).

``never_split`` strings (special tokens such as ``[CLS]``) are cut out of the raw text
first and passed through untouched.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

import regex

# Unicode White_Space (what Rust's char::is_whitespace tests)
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f"
)
_ASCII_PUNCT = re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_DROP = regex.compile(r"[\x00\ufffd]|[^\P{C}\t\n\r]")
_SPACE = regex.compile(f"[{_WS}]")
_CJK_RE = re.compile(f"[{_CJK}]")
_MN = regex.compile(r"\p{Mn}+")
_WORDS = regex.compile(f"[\\p{{P}}{_ASCII_PUNCT}]|[^{_WS}\\p{{P}}{_ASCII_PUNCT}]+")
_ASCII_WORDS = re.compile(f"[{_ASCII_PUNCT}]|[^\\s{_ASCII_PUNCT}]+", re.ASCII)
# ASCII cleaning: controls go, tab/newline/CR become spaces
_ASCII_CLEAN = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}
_ASCII_CLEAN.update({9: " ", 10: " ", 13: " "})


class BasicTokenizer:
    """Normalise and split text into words the way BERT does before WordPiece."""

    def __init__(
        self,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        never_split: Iterable[str] = (),
    ) -> None:
        self.do_lower_case = bool(do_lower_case)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = strip_accents
        self.clean_text = bool(clean_text)
        self.never_split = tuple(sorted({s for s in never_split if s}, key=len, reverse=True))
        self._never_re = (re.compile("(" + "|".join(map(re.escape, self.never_split)) + ")")
                          if self.never_split else None)

    def normalize(self, text: str) -> str:
        """Steps 1-4: the normalised text (spaces mark where words may split)."""
        ascii_only = text.isascii()
        if self.clean_text:
            if ascii_only:
                text = text.translate(_ASCII_CLEAN)
            else:
                text = _SPACE.sub(" ", _DROP.sub("", text))
        if ascii_only:
            return text.lower() if self.do_lower_case else text
        if self.tokenize_chinese_chars:
            text = _CJK_RE.sub(r" \g<0> ", text)
        strip = self.do_lower_case if self.strip_accents is None else self.strip_accents
        if strip:
            text = _MN.sub("", unicodedata.normalize("NFD", text))
        if self.do_lower_case:
            # Python's lower() applies the final-sigma rule; BERT lower-cases each character alone
            text = text.replace("\u03a3", "\u03c3").lower()
        return text

    def split(self, normalized: str) -> list[str]:
        """Step 5: words of normalised text."""
        if normalized.isascii():
            return _ASCII_WORDS.findall(normalized)
        return _WORDS.findall(normalized)

    def tokenize(self, text: str) -> list[str]:
        """Words of `text`; ``never_split`` strings come through whole and untouched."""
        if self._never_re is None:
            return self.split(self.normalize(text))
        out: list[str] = []
        for k, part in enumerate(self._never_re.split(text)):
            if k % 2:
                out.append(part)
            elif part:
                out.extend(self.split(self.normalize(part)))
        return out
