"""A sha256 manifest for directories that lmkit writes (training checkpoints, token shards,
quantized checkpoints, RAG indexes): written last, atomically, and checked by `verify_checksums`.

Atomic renames already keep a crash from publishing a half-written directory; the manifest
catches what renames cannot: a disk that lost or damaged bytes later, a copy that stopped
half-way, a file edited by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lmkit.atomic import atomic_write_text
from lmkit.errors import CheckpointError

CHECKSUMS_FILE = "checksums.sha256.json"


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """Hash every file under `directory` (dot-files and the manifest itself excepted)."""
    directory = Path(directory)
    sums = {str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS_FILE and not p.name.startswith(".")}
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n")
    return sums


def verify_checksums(directory: str | os.PathLike, required: bool = False) -> bool:
    """True when every listed file matches; CheckpointError naming the files that do not.
    Without a manifest: False (or CheckpointError when `required`)."""
    directory = Path(directory)
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        if required:
            raise CheckpointError(f"{directory}: no {CHECKSUMS_FILE}; the directory was not completely written")
        return False
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        items = list(sums.items())
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checksum manifest ({exc})") from None
    bad = [name for name, digest in items
           if not (directory / name).is_file() or file_sha256(directory / name) != digest]
    if bad:
        raise CheckpointError(f"{directory}: {len(bad)} file(s) do not match {CHECKSUMS_FILE}: {', '.join(bad[:10])}")
    return True
