"""Reading JSON Lines files with errors that name the file and line (data, tasks, preference pairs),
and JSON config files that must hold one object."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from lmkit.errors import ConfigError


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ConfigError) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a line that is not JSON raises `error`."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise error(f"{path}:{lineno}: JSON nested too deeply") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in the file at `path`; `what` names it in the error (a ConfigError) when the
    file cannot be read, is not JSON, or holds something other than an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object")
    return data
