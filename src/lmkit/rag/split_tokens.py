"""Token-based splitting with an lmkit tokenizer: chunk budgets in tokens, not characters.

Two ways, as in LangChain:

* `token_length(tokenizer)` gives a ``length_function`` for `RecursiveCharacterSplitter`, so
  chunks still break at paragraphs/lines/spaces and are exact substrings of the text, but
  ``chunk_size``/``chunk_overlap`` count tokens (what matters for a context window). This is
  `TokenBudgetSplitter`.
* `TokenWindowSplitter` cuts the id sequence itself into windows of ``chunk_size`` ids that
  start every ``chunk_size - chunk_overlap`` ids, and decodes each window (LangChain's
  ``TokenTextSplitter``). It never exceeds the budget, but a window may start mid-word and,
  for a lower-casing tokenizer such as BERT's WordPiece, the decoded text is normalised.
"""

from __future__ import annotations

from typing import Callable

from lmkit.rag.split_recursive import RecursiveCharacterSplitter, TextSplitter
from lmkit.tokenizers.base import Tokenizer


def token_length(tokenizer: Tokenizer) -> Callable[[str], int]:
    def length(text: str) -> int:
        return len(tokenizer.encode(text))

    return length


class TokenBudgetSplitter(RecursiveCharacterSplitter):
    def __init__(self, tokenizer: Tokenizer, chunk_size: int = 256, chunk_overlap: int = 32, **kw) -> None:
        super().__init__(chunk_size, chunk_overlap, length_function=token_length(tokenizer), **kw)
        self.tokenizer = tokenizer


class TokenWindowSplitter(TextSplitter):
    def __init__(self, tokenizer: Tokenizer, chunk_size: int = 256, chunk_overlap: int = 32) -> None:
        super().__init__(chunk_size, chunk_overlap)
        if chunk_overlap >= chunk_size:
            raise ValueError("TokenWindowSplitter needs chunk_overlap < chunk_size")
        self.tokenizer = tokenizer

    def split_text(self, text: str) -> list[str]:
        ids = self.tokenizer.encode(text)
        step = self.chunk_size - self.chunk_overlap
        out = []
        start = 0
        while start < len(ids):
            window = ids[start:start + self.chunk_size]
            text_ = self.tokenizer.decode(window)
            if text_:
                out.append(text_)
            if start + self.chunk_size >= len(ids):
                break
            start += step
        return out
