"""Stop strings matched on the decoded text, across token boundaries.

A stop string such as "\\n\\nUser:" rarely lines up with tokens: it may end in the middle
of a token or span three of them. So the text is matched, not the ids: each step's newly
decoded text is appended to a small buffer and searched. Text is released only once it can
no longer be the start of a stop string; the longest suffix of the buffer that is a prefix
of some stop string is held back. Streamed output therefore never shows part of a stop
string, and the concatenated output equals the full text cut before the earliest match
(as the OpenAI API returns it: the stop string itself is not included).
"""

from __future__ import annotations

from typing import Sequence


class StopStringMatcher:
    """Feed decoded text deltas; get back the text that is safe to emit and the stop string hit."""

    def __init__(self, stop: Sequence[str]) -> None:
        stops = [s for s in stop if s]
        if not stops:
            raise ValueError("StopStringMatcher needs at least one non-empty stop string")
        self.stops = list(dict.fromkeys(stops))
        # every proper prefix of a stop string, by length, for the hold-back test
        self._prefixes = {s[:k] for s in self.stops for k in range(1, len(s))}
        self._max_hold = max(len(s) for s in self.stops) - 1
        self.buffer = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, str | None]:
        """Append `text`; return (text to emit now, the stop string matched or None).

        After a match nothing more is emitted: further calls return ("", match).
        """
        if self.matched is not None:
            return "", self.matched
        buf = self.buffer + text
        best = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self.buffer = ""
            self.matched = best[1]
            return buf[: best[0]], best[1]
        hold = 0
        for k in range(min(self._max_hold, len(buf)), 0, -1):
            if buf[-k:] in self._prefixes:
                hold = k
                break
        self.buffer = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold], None

    def flush(self) -> str:
        """Generation ended without a match: release the held-back text."""
        out, self.buffer = ("" if self.matched is not None else self.buffer), ""
        return out


def find_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """(index, stop string) of the earliest stop string in `text`, or None."""
    best = None
    for s in stop:
        i = text.find(s) if s else -1
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best
