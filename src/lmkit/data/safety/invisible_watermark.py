"""An invisible text watermark: a payload written in zero-width characters between the words.

Each byte of the payload (UTF-8, plus a CRC-8 so a damaged mark is rejected, not misread)
becomes eight characters, U+200B ZERO WIDTH SPACE for 0 and U+200C ZERO WIDTH NON-JOINER
for 1, between two U+2063 INVISIBLE SEPARATOR markers. The mark is inserted after the first
word and again every `every` words, so a pasted excerpt usually still carries a whole copy.
Copy and paste keeps these characters (they are ordinary Unicode text), the text looks the
same, and `extract` finds every intact copy.

Limits (it labels text; it does not protect it):
- anyone can strip it: Unicode normalisers that drop format characters (lmkit's own
  `data/filters/normalize.py` does), "paste as plain text" in some editors, retyping, OCR,
  or a one-line regex removing U+200B/U+200C/U+2063;
- paraphrasing or translating the text loses it, unlike the statistical green-list
  watermark (infer/watermark.py), which survives editing of a fraction of the tokens;
- some renderers and terminals show the characters, and they change the string's length,
  its hash and how a tokenizer splits it;
- an excerpt shorter than the interval between copies may carry no whole copy.
"""

from __future__ import annotations

import re

ZERO, ONE, MARK = "\u200b", "\u200c", "\u2063"
_INVISIBLE = re.compile(f"[{ZERO}{ONE}{MARK}]")
_FRAME = re.compile(f"{MARK}([{ZERO}{ONE}]+){MARK}")


def _crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07): detects a damaged or truncated mark."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_mark(payload: str) -> str:
    """The invisible characters that carry `payload`."""
    data = payload.encode("utf-8")
    data += bytes([_crc8(data)])
    bits = "".join(f"{b:08b}" for b in data)
    return MARK + bits.replace("0", ZERO).replace("1", ONE) + MARK


def embed(text: str, payload: str, every: int = 20) -> str:
    """`text` with the mark of `payload` after its first word and after every `every` words."""
    if not payload:
        raise ValueError("the watermark payload must not be empty")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    mark = encode_mark(payload)
    parts = re.split(r"(\s+)", strip(text))
    out, words = [], 0
    for part in parts:
        out.append(part)
        if part and not part.isspace():
            if words % every == 0:
                out.append(mark)
            words += 1
    if words == 0:
        out.append(mark)
    return "".join(out)


def extract(text: str) -> list[str]:
    """The payloads of every intact mark in `text`, in order (damaged copies are skipped)."""
    found = []
    for m in _FRAME.finditer(text):
        bits = m.group(1).replace(ZERO, "0").replace(ONE, "1")
        if len(bits) % 8 or len(bits) < 16:
            continue
        data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
        if _crc8(data[:-1]) != data[-1]:
            continue
        try:
            found.append(data[:-1].decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return found


def strip(text: str) -> str:
    """`text` without any mark (the visible text)."""
    return _INVISIBLE.sub("", text)
