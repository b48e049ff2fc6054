"""Write files so that a crash never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _backups(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime_ns)


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the finished directory `new` be `target`; an existing `target` is swapped out and deleted.

    The swap is one atomic step where the OS has one (Linux); elsewhere the old directory is
    first renamed to ``.NAME.old-*`` and `recover_directory` puts it back if a crash comes
    between the two renames.
    """
    import shutil
    import uuid

    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):  # `new` now holds the old contents
        shutil.rmtree(new, ignore_errors=True)
        return
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, backup)
    os.rename(new, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover_directory(target: str | os.PathLike) -> bool:
    """If a crash inside `replace_directory` left `target` missing, put its previous version back."""
    target = Path(target)
    if target.exists():
        return False
    found = _backups(target)
    if not found:
        return False
    os.rename(found[-1], target)
    return True
