"""Reading training text: strings and UTF-8 files, streamed, with clear errors.

Used by the trainers of every tokenizer (BPE, Unigram, whitespace, character). Files are
read about 1 MB of lines at a time (never whole); a byte sequence that is not UTF-8 raises
a ``TokenizerError`` naming the file and the byte offset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from lmkit.errors import TokenizerError

_READ_BLOCK = 1 << 20


def iter_text(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[str, str]]:
    """(text block, where it came from) for texts (``str``: the text itself, one block)
    and UTF-8 files (``os.PathLike``: a path; blocks of whole lines, ~1 MB each)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    for src in sources:
        if isinstance(src, os.PathLike):
            path = Path(src)
            if not path.is_file():
                raise TokenizerError(f"training file {str(path)!r} does not exist")
            offset = 0
            with open(path, "rb") as f:
                while True:
                    lines = f.readlines(_READ_BLOCK)
                    if not lines:
                        break
                    block = b"".join(lines)
                    try:
                        text = block.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise TokenizerError(
                            f"{path}: invalid UTF-8 at byte offset {offset + exc.start} "
                            f"(byte 0x{block[exc.start]:02x}); convert the file to UTF-8 first"
                        ) from None
                    offset += len(block)
                    yield text, str(path)
        elif isinstance(src, str):
            yield src, "<text>"
        else:
            raise TokenizerError(f"training input must be str (text) or a path, got {type(src).__name__}")


def iter_lines(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """Lines of texts (``str``: the text itself) and files (``os.PathLike``: a path)."""
    for text, _ in iter_text(sources):
        yield from text.splitlines()
