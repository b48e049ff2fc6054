"""`Document`: a piece of text and where it came from.

Loaders return one Document per file (or per PDF page / JSONL record); splitters return one
Document per chunk. ``metadata`` always carries ``source`` (the file path) and, for chunks,
``start_index`` (character offset of the chunk in the loaded text) — so a citation can point
back to the exact place. PDF pages add ``page`` (1-based); JSONL records add ``line``;
Markdown-header splitting adds ``headers`` (the path of section titles).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_text(self, text: str, **extra: Any) -> "Document":
        """A new Document with `text` and this one's metadata updated by `extra`."""
        return Document(text, {**self.metadata, **extra})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Document":
        return cls(str(d["text"]), dict(d.get("metadata") or {}))
