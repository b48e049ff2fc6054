"""Stop strings matched across token boundaries.

A stop string such as "\\n\\nUser:" is usually split over several tokens, and one token
may hold the end of a stop string and more text after it. So matching runs on the bytes
of the output, not on tokens: after each new token the matcher searches only the region
where a new match can end (the new bytes plus the longest stop string minus one byte
before them), so the cost per token is O(new bytes + longest stop), not O(output).

Working on UTF-8 bytes is exact: UTF-8 is self-synchronising, so the bytes of a string
can only match at character boundaries of valid text. The result is the byte offset where
the first stop string starts; the text before it is the output (OpenAI semantics: the stop
string itself is not returned).
"""

from __future__ import annotations

from typing import Sequence


class StopStringMatcher:
    """Incremental matcher for one sequence. `push(new_bytes)` -> offset of a match or None."""

    def __init__(self, stop: Sequence[str]) -> None:
        stops = [s for s in stop if s]
        if not stops:
            raise ValueError("StopStringMatcher needs at least one non-empty stop string")
        self.stops = [s.encode("utf-8") for s in stops]
        self.longest = max(len(s) for s in self.stops)
        self.buffer = bytearray()
        self.match: int | None = None  # byte offset where the earliest stop string starts
        self.matched: str | None = None

    def push(self, new: bytes) -> int | None:
        """Append the bytes of a new token; return the match offset once a stop string is complete."""
        if self.match is not None:
            return self.match
        start = max(0, len(self.buffer) - self.longest + 1)
        self.buffer += new
        region = bytes(self.buffer[start:])
        best: tuple[int, bytes] | None = None
        for s in self.stops:
            i = region.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self.match = start + best[0]
            self.matched = best[1].decode("utf-8")
        return self.match

    def holdback(self) -> int:
        """Bytes at the end of the buffer that could be the start of a stop string.

        A streaming client must not be shown them yet: the next token may complete the stop
        string, and then they are not part of the output.
        """
        if self.match is not None:
            return 0
        buf = self.buffer
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best

    def text_before_match(self) -> bytes:
        return bytes(self.buffer if self.match is None else self.buffer[: self.match])


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Cut `text` before the earliest stop string; returns (text, the stop string or None)."""
    best: tuple[int, str] | None = None
    for s in stop:
        i = text.find(s) if s else -1
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return (text, None) if best is None else (text[: best[0]], best[1])
