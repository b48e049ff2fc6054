"""Documents as records: read from JSON Lines or text files, written back in the same form.

Deduplication and decontamination read a corpus twice (once to find what to drop, once to
write what is kept), keep nothing but ids in memory, and must write each kept document
exactly as it came. A `Record` is one document: its text, and for JSON Lines the whole
object (so every other field survives). ``.jsonl`` / ``.json`` files are JSON Lines with the
text in `field`; any other file is text, split into documents by line, blank-line paragraph
or whole file (`lmkit.data.shards.read_documents`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from lmkit.atomic import atomic_path
from lmkit.data.shards import CorpusError, corpus_files, read_documents
from lmkit.jsonl import iter_jsonl

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
SEPARATORS = {"line": "\n", "paragraph": "\n\n", "file": "\n\n"}


@dataclass
class Record:
    """One document: `text` (what is compared) and, for JSON Lines, the whole `obj`."""

    text: str
    source: str
    obj: dict[str, Any] | None = None

    def with_text(self, text: str, field: str = "text") -> "Record":
        """The same record with new text (its JSON object updated too)."""
        obj = None if self.obj is None else {**self.obj, field: text}
        return Record(text, self.source, obj)


def is_jsonl(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in JSONL_SUFFIXES


def read_records(path: str | os.PathLike, field: str = "text", split_by: str = "line") -> Iterator[Record]:
    """The records of one file (see the module docstring); a JSON line without `field` is an error."""
    path = Path(path)
    if not is_jsonl(path):
        for text in read_documents(path, split_by):
            yield Record(text, str(path))
        return
    for lineno, obj in iter_jsonl(path, error=CorpusError):
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object with a {field!r} field, got {type(obj).__name__}")
        text = obj.get(field)
        if not isinstance(text, str):
            found = ", ".join(sorted(obj)) or "none"
            raise CorpusError(f"{path}:{lineno}: no text field {field!r} (fields: {found}); choose one with --field")
        yield Record(text, f"{path}:{lineno}", obj)


def iter_records(paths: Sequence[str | os.PathLike] | str | os.PathLike, field: str = "text",
                 split_by: str = "line") -> Iterator[Record]:
    """Records of every file (folders are walked, as `lmkit.data.shards.corpus_files` does)."""
    for f in corpus_files(paths):
        yield from read_records(f, field, split_by)


def count_bytes(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> int:
    """Total size of the input files (for progress totals)."""
    return sum(f.stat().st_size for f in corpus_files(paths))


class RecordWriter:
    """Write records to `path` atomically: JSON Lines when `path` ends in .jsonl, else text.

    Text output separates documents the way they were split (`split_by`). Use as a context
    manager; the file appears only when the block ends without an error.
    """

    def __init__(self, path: str | os.PathLike, split_by: str = "line") -> None:
        self.path = Path(path)
        self.jsonl = is_jsonl(self.path)
        self.separator = SEPARATORS.get(split_by, "\n")
        self.count = 0
        self._ctx = atomic_path(self.path)
        self._file: IO[str] | None = None

    def __enter__(self) -> "RecordWriter":
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "w", encoding="utf-8")
        return self

    def write(self, record: Record) -> None:
        assert self._file is not None, "use RecordWriter in a with block"
        if self.jsonl:
            obj = record.obj if record.obj is not None else {"text": record.text}
            self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        else:
            self._file.write((self.separator if self.count else "") + record.text)
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        assert self._file is not None
        if not self.jsonl and self.count:
            self._file.write("\n")
        self._file.close()
        self._ctx.__exit__(*exc)
