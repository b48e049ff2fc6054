"""tiktoken rank files: one ``<base64 token bytes> <rank>`` per line (``cl100k_base.tiktoken``).

The rank is both the token id and the merge priority: two adjacent tokens may merge when
their concatenation is a token, and the lowest-ranked such concatenation merges first.
The file holds no pattern and no special tokens; they are given when loading
(``BPETokenizer.from_tiktoken(path, pattern="cl100k", special_tokens={...})``).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from lmkit.atomic import atomic_write_text
from lmkit.errors import TokenizerError


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """token bytes -> rank, checked: every line well-formed, no duplicate token or rank."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tiktoken rank file {str(path)!r} does not exist")
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError("expected two fields")
                token = base64.b64decode(parts[0], validate=True)
                rank = int(parts[1])
            except (ValueError, binascii.Error) as exc:
                raise TokenizerError(
                    f"{path}:{lineno}: corrupt tiktoken rank file ({exc}); each line must be "
                    "'<base64 token> <rank>'"
                ) from None
            if token in ranks or rank in seen_ranks or rank < 0:
                raise TokenizerError(f"{path}:{lineno}: duplicate or negative token/rank {parts[0]!r} {rank}")
            ranks[token] = rank
            seen_ranks.add(rank)
    if not ranks:
        raise TokenizerError(f"{path}: the tiktoken rank file is empty")
    return ranks


def save_tiktoken_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write `ranks` in tiktoken's format, sorted by rank (atomically)."""
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write_text(path, "".join(lines))
