"""C4's line rules (Raffel et al. 2020, section 2.2), as datatrove's ``C4QualityFilter`` applies them.

Each line (split at newlines, stripped) is checked in this order:

1. a word longer than 1000 characters: the line goes;
2. Wikipedia citation marks (``[1]``, ``[edit]``, ``[citation needed]``) are removed;
3. the line must end in terminal punctuation (``. ? ! " '``) and not in ``...``, else it goes;
4. fewer than 3 words (whitespace-separated): the line goes;
5. "lorem ipsum" anywhere (case-insensitive): the whole document goes;
6. "javascript": the line goes;
7. a curly bracket ``{``: the whole document goes;
8. "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
   "use cookies": the line goes.

The kept lines are joined by newlines; a document with fewer than 5 sentences in its kept
lines goes. Chinese-aware variant: on a line with Han characters, ``。！？”`` also end a
sentence and each Han character counts as a word.
"""

from __future__ import annotations

import re

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterResult
from lmkit.data.filters.words import HAN_CHAR, is_symbol_word, split_words

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ZH_END_PUNCTUATION = ("。", "！", "？", "”", "」", "…")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
#: a sentence ends at terminal punctuation followed by a space (or, for Chinese marks, anything)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)|(?<=[。！？])")


def count_sentences(line: str) -> int:
    """Sentences in one line (a rule-based stand-in for the punkt tokenizer datatrove uses)."""
    return len([s for s in SENTENCE_END.split(line) if s.strip()])


class C4QualityFilter(DocumentFilter):
    """C4 line filtering and document rules; the kept lines replace the text."""

    name = "c4"

    def __init__(self, remove_citations: bool = True, filter_no_terminal_punct: bool = True,
                 min_num_sentences: int = 5, min_words_per_line: int = 3, max_word_length: int = 1000,
                 filter_lorem_ipsum: bool = True, filter_javascript: bool = True,
                 filter_curly_bracket: bool = True, filter_policy: bool = True) -> None:
        self.remove_citations, self.filter_no_terminal_punct = remove_citations, filter_no_terminal_punct
        self.min_num_sentences, self.min_words_per_line = min_num_sentences, min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy
        self.line_drops: dict[str, int] = {}

    def _drop_line(self, why: str) -> None:
        self.line_drops[why] = self.line_drops.get(why, 0) + 1

    def apply(self, text: str) -> FilterResult:
        sentences = 0
        kept: list[str] = []
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            zh = HAN_CHAR.search(line) is not None
            if self.max_word_length != -1 and any(len(w) > self.max_word_length for w in words) and not zh:
                self._drop_line("too_long_word")
                continue
            if self.remove_citations:
                line = CITATION.sub("", line)
            ends = END_PUNCTUATION + ZH_END_PUNCTUATION if zh else END_PUNCTUATION
            if self.filter_no_terminal_punct and (not line.endswith(ends) or line.endswith(ELLIPSIS)):
                self._drop_line("no_terminal_punct")
                continue
            n_words = len([w for w in split_words(line) if not is_symbol_word(w)]) if zh else len(words)
            if n_words < self.min_words_per_line:
                self._drop_line("too_few_words")
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return Dropped("lorem_ipsum")
            if self.filter_javascript and "javascript" in lower:
                self._drop_line("javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                return Dropped("curly_bracket")
            if self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                self._drop_line("policy")
                continue
            if self.min_num_sentences != -1:
                sentences += count_sentences(line)
            kept.append(line)
        if sentences < self.min_num_sentences:
            return Dropped("too_few_sentences")
        return "\n".join(kept).strip()
