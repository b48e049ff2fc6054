"""Reading and writing tokenizer JSON files, with errors that name the file and the fault.

Shared by the BPE, Unigram, WordPiece, whitespace and character tokenizers: their own
lmkit JSON formats (``{"format": "lmkit.<kind>", "version": N, ...}``) and Hugging Face
``tokenizer.json`` files. A missing file, bytes that are not UTF-8, invalid JSON, a wrong
format tag and a corrupt body each raise one ``TokenizerError`` saying what is wrong.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError

#: errors that mean "the file's content is not what the format says"
CORRUPT_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def read_file_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {str(path)!r} does not exist")
    return path.read_bytes()


def parse_json(raw: bytes | str, path) -> object:
    """The JSON value of `raw` (bytes are decoded as UTF-8); `path` names it in errors."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: corrupt tokenizer file (not UTF-8 at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(
            f"{path}: corrupt tokenizer file (invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None


def read_json(path: str | os.PathLike) -> object:
    return parse_json(read_file_bytes(path), Path(path))


def write_json(path: str | os.PathLike, data: dict) -> None:
    """One line of JSON (non-ASCII kept), written atomically."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False) + "\n")


def is_hf_tokenizer_json(data: object) -> bool:
    """True for a parsed Hugging Face ``tokenizer.json`` (a "model" object, no lmkit "format")."""
    return isinstance(data, dict) and "model" in data and "format" not in data


def check_format(data: object, source: str, fmt: str, version: int, kind: str) -> None:
    """`data` must be a dict tagged ``"format": fmt`` at ``"version": version``."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise TokenizerError(f"{source}: not an lmkit {kind} tokenizer (no \"format\": \"{fmt}\")")
    if data.get("version") != version:
        raise TokenizerError(f"{source}: unsupported lmkit {kind} format version {data.get('version')!r}")


@contextmanager
def corrupt_file_errors(source: str, hint: str = "re-create or re-download it") -> Iterator[None]:
    """Inside: building a tokenizer from a parsed lmkit file. Any failure is re-raised as a
    ``TokenizerError`` saying that `source` is corrupt."""
    try:
        yield
    except TokenizerError as exc:
        raise TokenizerError(f"{source}: corrupt tokenizer file: {exc}") from exc
    except CORRUPT_ERRORS as exc:
        raise TokenizerError(f"{source}: corrupt tokenizer file ({type(exc).__name__}: {exc}); {hint}") from exc


@contextmanager
def hf_json_errors(source: str) -> Iterator[None]:
    """Inside: building a tokenizer from a Hugging Face ``tokenizer.json`` dict. Failures
    are re-raised as a ``TokenizerError`` prefixed with `source`."""
    try:
        yield
    except TokenizerError as exc:
        raise TokenizerError(f"{source}: {exc}") from exc
    except CORRUPT_ERRORS as exc:
        raise TokenizerError(f"{source}: corrupt tokenizer.json ({type(exc).__name__}: {exc})") from exc
