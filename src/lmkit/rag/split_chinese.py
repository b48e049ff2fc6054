"""Chinese sentence-aware splitting: never cut inside a sentence if it can be helped.

Sentences end after 。！？；… (and their ASCII/fullwidth variants ! ? ;), plus any closing
quotes or brackets that follow (”’」』）》) and after line breaks. Sentences are packed into
chunks of at most ``chunk_size`` characters (``length_function``); consecutive chunks share
whole trailing sentences worth at most ``chunk_overlap``. A sentence longer than
``chunk_size`` on its own is cut by `RecursiveCharacterSplitter` (commas first: ，、, then
characters). Every chunk is an exact substring of the input.
"""

from __future__ import annotations

import re
from typing import Callable

from lmkit.rag.split_recursive import RecursiveCharacterSplitter, TextSplitter

_SENTENCE = re.compile(r"[^。！？；!?;…\n]*(?:[。！？；!?;]+|…+|\n+|$)[”’」』）》\)\"']*")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each with its end punctuation; ''.join(result) == text."""
    return [m.group(0) for m in _SENTENCE.finditer(text) if m.group(0)]


class ChineseSentenceSplitter(TextSplitter):
    def __init__(self, chunk_size: int = 300, chunk_overlap: int = 50,
                 length_function: Callable[[str], int] = len) -> None:
        super().__init__(chunk_size, chunk_overlap, length_function, keep_separator=False, strip_whitespace=True)
        self._long = RecursiveCharacterSplitter(chunk_size, chunk_overlap,
                                                separators=["\n", "，", "、", ",", " ", ""],
                                                keep_separator="end", length_function=length_function)

    def split_text(self, text: str) -> list[str]:
        pieces: list[str] = []
        for s in split_sentences(text):
            if self.length_function(s) > self.chunk_size:
                pieces.extend(self._long.split_text(s))
            else:
                pieces.append(s)
        return self.merge_splits(pieces, "")
