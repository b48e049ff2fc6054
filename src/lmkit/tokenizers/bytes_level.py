"""The byte <-> printable-character table of byte-level BPE (GPT-2's ``bytes_to_unicode``).

Byte-level BPE works on UTF-8 bytes, so it never meets an unknown character. To store
byte tokens in JSON (and to stay compatible with GPT-2 / Hugging Face ``tokenizer.json``
files) each of the 256 byte values is shown as one printable Unicode character: printable
Latin-1 bytes stand for themselves, the others (control characters, space, ...) are
shifted to U+0100 and above. A space therefore appears as ``Ġ`` and a newline as ``Ċ``.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """byte value -> the printable character that stands for it (GPT-2's table)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def bytes_to_token_str(data: bytes) -> str:
    """``b" the"`` -> ``"Ġthe"``: how a byte token is written in vocab files."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def token_str_to_bytes(token: str) -> bytes:
    """``"Ġthe"`` -> ``b" the"``; raises ``KeyError`` on a character outside the table."""
    table = unicode_to_bytes()
    return bytes(table[c] for c in token)
