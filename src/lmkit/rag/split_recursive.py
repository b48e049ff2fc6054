"""Recursive character splitting, with LangChain's `RecursiveCharacterTextSplitter` semantics.

Try the separators in order ("\\n\\n", "\\n", " ", ""): split the text on the first one that
occurs in it; pieces shorter than ``chunk_size`` are merged greedily into chunks (joined
with the separator, or with nothing when the separator is kept on the pieces); a piece that
is still too long is split again with the remaining separators. With ``keep_separator``
True/"start" the separator stays at the start of the following piece, with "end" at the end
of the preceding one, with False it is dropped (and re-inserted between merged pieces).

Merging (`merge_splits`) keeps an overlap: after a chunk is emitted, pieces are dropped from
its front until what remains is at most ``chunk_overlap`` long (and leaves room for the next
piece); the rest starts the next chunk. Lengths are measured by ``length_function``
(characters by default; a tokenizer's count for token budgets). Each chunk is stripped of
surrounding whitespace (``strip_whitespace``) and empty chunks are dropped.

This reproduces the library's behaviour to the character, quirks included (a piece at the
last separator is emitted whole even if too long; ``chunk_size`` compares with ``<``), and
is tested against it. `split_documents` adds ``start_index`` (the chunk's character offset
in its document), found the way LangChain's ``add_start_index`` does.
"""

from __future__ import annotations

import copy
import re
from typing import Callable, Iterable, Literal, Sequence

from lmkit.rag.document import Document

KeepSeparator = bool | Literal["start", "end"]


def split_with_regex(text: str, separator: str, keep_separator: KeepSeparator) -> list[str]:
    """Split `text` on the regex `separator`, keeping it on the next ("start"/True) or the
    previous ("end") piece; an empty separator splits into characters; empty pieces dropped."""
    if separator:
        if keep_separator:
            parts = re.split(f"({separator})", text)
            if keep_separator == "end":
                splits = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
            else:
                splits = [parts[i] + parts[i + 1] for i in range(1, len(parts), 2)]
            if len(parts) % 2 == 0:
                splits += parts[-1:]
            splits = [*splits, parts[-1]] if keep_separator == "end" else [parts[0], *splits]
        else:
            splits = re.split(separator, text)
    else:
        splits = list(text)
    return [s for s in splits if s]


class TextSplitter:
    """Chunk size/overlap bookkeeping shared by the splitters."""

    def __init__(self, chunk_size: int = 4000, chunk_overlap: int = 200,
                 length_function: Callable[[str], int] = len, keep_separator: KeepSeparator = False,
                 strip_whitespace: bool = True) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        if chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be >= 0, got {chunk_overlap}")
        if chunk_overlap > chunk_size:
            raise ValueError(f"chunk_overlap ({chunk_overlap}) must not exceed chunk_size ({chunk_size})")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.length_function = length_function
        self.keep_separator = keep_separator
        self.strip_whitespace = strip_whitespace

    def split_text(self, text: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _join(self, pieces: Sequence[str], separator: str) -> str | None:
        text = separator.join(pieces)
        if self.strip_whitespace:
            text = text.strip()
        return text or None

    def merge_splits(self, splits: Iterable[str], separator: str) -> list[str]:
        """Greedily pack pieces into chunks of at most chunk_size, with chunk_overlap carry-over."""
        size, overlap, length = self.chunk_size, self.chunk_overlap, self.length_function
        sep_len = length(separator)
        docs: list[str] = []
        current: list[str] = []
        total = 0
        for d in splits:
            n = length(d)
            if total + n + (sep_len if current else 0) > size:
                if current:
                    doc = self._join(current, separator)
                    if doc is not None:
                        docs.append(doc)
                    while total > overlap or (total + n + (sep_len if current else 0) > size and total > 0):
                        total -= length(current[0]) + (sep_len if len(current) > 1 else 0)
                        current = current[1:]
            current.append(d)
            total += n + (sep_len if len(current) > 1 else 0)
        doc = self._join(current, separator)
        if doc is not None:
            docs.append(doc)
        return docs

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        """Split each document; chunks keep its metadata plus ``start_index`` (character
        offset in the document, -1 if a chunk is not a substring, e.g. decoded tokens)."""
        out = []
        for doc in documents:
            index, prev_len = 0, 0
            for chunk in self.split_text(doc.text):
                offset = index + prev_len - self.chunk_overlap
                index = doc.text.find(chunk, max(0, offset))
                if index < 0:
                    index = doc.text.find(chunk)
                meta = copy.deepcopy(doc.metadata)
                meta["start_index"] = meta.get("start_index", 0) + index if index >= 0 else -1
                prev_len = len(chunk)
                out.append(Document(chunk, meta))
        return out


class RecursiveCharacterSplitter(TextSplitter):
    def __init__(self, chunk_size: int = 4000, chunk_overlap: int = 200, separators: Sequence[str] | None = None,
                 keep_separator: KeepSeparator = True, is_separator_regex: bool = False,
                 length_function: Callable[[str], int] = len, strip_whitespace: bool = True) -> None:
        super().__init__(chunk_size, chunk_overlap, length_function, keep_separator, strip_whitespace)
        self.separators = list(separators or ["\n\n", "\n", " ", ""])
        self.is_separator_regex = is_separator_regex

    def _split(self, text: str, separators: list[str]) -> list[str]:
        final: list[str] = []
        separator = separators[-1]
        rest: list[str] = []
        for i, s in enumerate(separators):
            pattern = s if self.is_separator_regex else re.escape(s)
            if not s:
                separator = s
                break
            if re.search(pattern, text):
                separator, rest = s, separators[i + 1:]
                break
        pattern = separator if self.is_separator_regex else re.escape(separator)
        splits = split_with_regex(text, pattern, self.keep_separator)
        good: list[str] = []
        joiner = "" if self.keep_separator else separator
        for s in splits:
            if self.length_function(s) < self.chunk_size:
                good.append(s)
                continue
            if good:
                final.extend(self.merge_splits(good, joiner))
                good = []
            if not rest:
                final.append(s)
            else:
                final.extend(self._split(s, rest))
        if good:
            final.extend(self.merge_splits(good, joiner))
        return final

    def split_text(self, text: str) -> list[str]:
        return self._split(text, self.separators)
