"""Gopher's quality rules (Rae et al. 2021, appendix A1), with datatrove's defaults.

A document is dropped when (in this order, the first failing rule names the reason):

* its non-symbol words number fewer than 50 or more than 100,000;
* their mean length is below 3 or above 10 characters;
* ``#`` or ellipses (``...``, ``…``) occur more than 0.1 times per word (all tokens);
* more than 90 % of its lines start with a bullet (``•`` or ``-``), or more than 30 % end
  with an ellipsis;
* fewer than 80 % of its words contain an alphabetic character;
* fewer than 2 distinct stop words (the, be, to, of, and, that, have, with) occur in it.

Every comparison is strict as in datatrove's ``GopherQualityFilter`` (a document exactly at a
threshold is kept). Words are `lmkit.data.filters.words.split_words` tokens, so a Han
character counts as a word. The Chinese variant (``language="zh"``, or ``"auto"`` on text that
is mostly Han characters) keeps every rule except that mean word length (always 1 for Han
characters) is not checked and the stop words are Chinese function words.
"""

from __future__ import annotations

from typing import Iterable

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterError, FilterResult
from lmkit.data.filters.words import han_fraction, is_symbol_word, split_words

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
ZH_STOP_WORDS = ("的", "了", "是", "在", "和", "有", "我", "不", "这", "也", "就", "都", "而", "与", "中", "为")
LANGUAGES = ("en", "zh", "auto")


def _ratio_over(count: float, total: float, limit: float | None) -> bool:
    return limit is not None and total > 0 and count / total > limit


class GopherQualityFilter(DocumentFilter):
    """Gopher quality heuristics; ``None`` switches a rule off (as in datatrove)."""

    name = "gopher_quality"

    def __init__(self, min_doc_words: int | None = 50, max_doc_words: int | None = 100_000,
                 min_avg_word_length: float | None = 3, max_avg_word_length: float | None = 10,
                 max_symbol_word_ratio: float | None = 0.1, max_bullet_lines_ratio: float | None = 0.9,
                 max_ellipsis_lines_ratio: float | None = 0.3, max_non_alpha_words_ratio: float | None = 0.8,
                 min_stop_words: int | None = 2, stop_words: Iterable[str] | None = None,
                 language: str = "auto", zh_threshold: float = 0.3) -> None:
        if language not in LANGUAGES:
            raise FilterError(f"language={language!r}: choose one of {', '.join(LANGUAGES)}")
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio  # the minimum share of words with a letter
        self.min_stop_words = min_stop_words
        self.stop_words = list(STOP_WORDS if stop_words is None else stop_words)
        self.language, self.zh_threshold = language, zh_threshold

    def _is_chinese(self, text: str) -> bool:
        return self.language == "zh" or (self.language == "auto" and han_fraction(text) >= self.zh_threshold)

    def apply(self, text: str) -> FilterResult:
        zh = self._is_chinese(text)
        words = split_words(text)
        n_words = len(words)
        content = [w for w in words if not is_symbol_word(w)]
        n_content = len(content)
        if self.min_doc_words is not None and n_content < self.min_doc_words:
            return Dropped("gopher_short_doc")
        if self.max_doc_words is not None and n_content > self.max_doc_words:
            return Dropped("gopher_long_doc")
        if not zh and n_content:
            mean = sum(len(w) for w in content) / n_content
            if self.min_avg_word_length is not None and mean < self.min_avg_word_length:
                return Dropped("gopher_below_avg_word_length")
            if self.max_avg_word_length is not None and mean > self.max_avg_word_length:
                return Dropped("gopher_above_avg_word_length")
        if n_words == 0:
            return Dropped("gopher_no_words")
        if _ratio_over(text.count("#"), n_words, self.max_symbol_word_ratio):
            return Dropped("gopher_too_many_hashes")
        if _ratio_over(text.count("...") + text.count("…"), n_words, self.max_symbol_word_ratio):
            return Dropped("gopher_too_many_ellipsis")
        lines = text.splitlines() or [""]
        bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines)
        if _ratio_over(bullets, len(lines), self.max_bullet_lines_ratio):
            return Dropped("gopher_too_many_bullets")
        ellipsis_ends = sum(s.rstrip().endswith(("...", "…")) for s in lines)
        if _ratio_over(ellipsis_ends, len(lines), self.max_ellipsis_lines_ratio):
            return Dropped("gopher_too_many_end_ellipsis")
        if self.max_non_alpha_words_ratio is not None:
            alpha = sum(any(c.isalpha() for c in w) for w in words)
            if alpha / n_words < self.max_non_alpha_words_ratio:
                return Dropped("gopher_below_alpha_threshold")
        if self.min_stop_words is not None:
            stop = set(ZH_STOP_WORDS) if zh and self.stop_words == list(STOP_WORDS) else set(self.stop_words)
            if len(stop.intersection(words)) < self.min_stop_words:
                return Dropped("gopher_enough_stop_words")
        return text
