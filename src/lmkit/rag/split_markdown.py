"""Markdown-header-aware splitting: one section per header, with the path of titles above it.

A line ``# Title`` … ``###### Title`` (ATX headers) opens a section; lines inside fenced
code blocks (``` or ~~~) are never headers (a ``# comment`` in code stays code). With
``html_headers=True`` a line that starts with ``<h1>``…``<h6>`` counts too (the notes mix
both). Each section becomes a Document with metadata ``headers`` (list of titles from the
outermost level down to this section's own), ``section`` (the titles joined by " > ") and
``start_index`` (character offset of the section in the source text). Sections longer than
``chunk_size`` are cut further by a `RecursiveCharacterSplitter`; ``include_header`` puts
the header path at the top of every chunk so it is embedded and retrieved with its text.
"""

from __future__ import annotations

import re
from typing import Iterable

from lmkit.rag.document import Document
from lmkit.rag.split_recursive import RecursiveCharacterSplitter

_ATX = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_HTML_H = re.compile(r"^\s*<h([1-6])\b[^>]*>(.*?)</h\1>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _clean_title(t: str) -> str:
    return " ".join(_TAGS.sub("", t).replace("*", "").split())


class MarkdownHeaderSplitter:
    def __init__(self, chunk_size: int | None = None, chunk_overlap: int = 0, include_header: bool = True,
                 html_headers: bool = True, max_level: int = 6) -> None:
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.include_header = include_header
        self.html_headers = html_headers
        self.max_level = max_level
        self._inner = (RecursiveCharacterSplitter(chunk_size, chunk_overlap) if chunk_size else None)

    def header_of(self, line: str) -> tuple[int, str] | None:
        m = _ATX.match(line)
        if m:
            level, title = len(m.group(1)), _clean_title(m.group(2))
        elif self.html_headers and (m := _HTML_H.match(line)):
            level, title = int(m.group(1)), _clean_title(m.group(2))
        else:
            return None
        return (level, title) if title and level <= self.max_level else None

    def sections(self, text: str) -> list[tuple[list[str], int, str]]:
        """[(header path, start offset, section text including its header line)]."""
        out: list[tuple[list[str], int, str]] = []
        stack: list[tuple[int, str]] = []
        start, pos, in_fence = 0, 0, False
        path: list[str] = []
        def emit(end: int) -> None:
            body = text[start:end]
            content = body.split("\n", 1)[1] if path and body and self.header_of(body.split("\n", 1)[0].rstrip("\r")) else body
            if content.strip():  # a header with nothing under it is not a section (as LangChain)
                out.append((path, start, body))

        for line in text.splitlines(keepends=True):
            if _FENCE.match(line):
                in_fence = not in_fence
            hdr = None if in_fence else self.header_of(line.rstrip("\r\n"))
            if hdr is not None:
                emit(pos)
                level, title = hdr
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, title))
                path = [t for _, t in stack]
                start = pos
            pos += len(line)
        emit(pos)
        return out

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        out = []
        for doc in documents:
            base = doc.metadata.get("start_index", 0)
            for path, start, body in self.sections(doc.text):
                section = " > ".join(path)
                meta = {**doc.metadata, "headers": list(path), "section": section}
                pieces = [(body.strip(), start + len(body) - len(body.lstrip()))]
                if self._inner is not None:
                    pieces = [(c.text, start + c.metadata["start_index"])
                              for c in self._inner.split_documents([Document(body)])]
                for text, off in pieces:
                    if self.include_header and path and not text.lstrip().startswith(("#", "<h")):
                        shown = f"{section}\n{text}"
                    else:
                        shown = text
                    out.append(Document(shown, {**meta, "start_index": base + off}))
        return out

    def split_text(self, text: str) -> list[str]:
        return [d.text for d in self.split_documents([Document(text)])]
