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

`StopTracker` is the one place that decides when a sequence is finished: an EOS id, a stop
string (through `StopStringMatcher`) or the token budget. `generate`, speculative decoding,
the serving engine and `TextStream` all use it. `model_eos_ids` reads a model's EOS ids.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from lmkit.errors import ConfigError


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


def token_bytes_fn(tokenizer, skip_ids: Iterable[int] = ()) -> Callable[[int], bytes]:
    """token id -> the bytes it adds to the text (b"" for EOS and other skipped ids)."""
    skip = frozenset(int(i) for i in skip_ids)
    if callable(getattr(tokenizer, "token_bytes", None)):
        tb = tokenizer.token_bytes
        return lambda i: b"" if i in skip else tb(int(i))
    return lambda i: b"" if i in skip else tokenizer.decode([int(i)]).encode("utf-8")


def model_eos_ids(model) -> list[int]:
    """The EOS ids of a model: its checkpoint's generation_config.json list when it has one (as in
    transformers, which stops on those), else its config's (a list in `extra` wins)."""
    defaults = getattr(model, "generation_defaults", None)
    if defaults is not None and defaults.eos_token_id:
        return [int(e) for e in defaults.eos_token_id]
    cfg = getattr(model, "config", None)
    if cfg is None:
        return []
    extra = getattr(cfg, "extra", None) or {}
    eos = extra.get("eos_token_id") if isinstance(extra.get("eos_token_id"), list) else None
    eos = eos if eos is not None else getattr(cfg, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


class StopTracker:
    """Whether one generated sequence is finished, fed one token at a time.

    push(token) -> True once the sequence is done. It ends at an EOS id ("stop", stop_reason
    the id), at a completed stop string ("stop", stop_reason the string; matched on the
    sequence's bytes, so `token_bytes` is needed) or after `max_tokens` tokens ("length").
    Checked in that order; tokens pushed after the end are ignored. `count` is the number of
    tokens of the sequence (the ending one included).
    """

    def __init__(self, eos_ids: Iterable[int] = (), stop: Sequence[str] | None = None,
                 max_tokens: int | None = None, token_bytes: Callable[[int], bytes] | None = None) -> None:
        if stop and token_bytes is None:
            raise ConfigError("stop strings need the tokenizer (to see the bytes of each token)")
        self.eos = frozenset(int(i) for i in eos_ids)
        self.matcher = StopStringMatcher(stop) if stop else None
        self.token_bytes = token_bytes
        self.max_tokens = max_tokens
        self.count = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @classmethod
    def for_config(cls, config, tokenizer=None) -> "StopTracker":
        """The tracker a `GenerationConfig` asks for (EOS ids, stop strings, max_new_tokens)."""
        eos = config.eos_token_ids
        tb = token_bytes_fn(tokenizer, eos) if config.stop and tokenizer is not None else None
        return cls(eos, config.stop, config.max_new_tokens, tb)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> bool:
        """Add the sequence's next token; returns whether the sequence is now finished."""
        if self.finish_reason is not None:
            return True
        self.count += 1
        if token in self.eos:
            self.finish_reason, self.stop_reason = "stop", int(token)
        elif self.matcher is not None and self.matcher.push(self.token_bytes(token)) is not None:
            self.finish_reason, self.stop_reason = "stop", self.matcher.matched
        elif self.max_tokens is not None and self.count >= self.max_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def shown_bytes(self) -> int:
        """Bytes of the stop matcher's buffer that are output for sure: all before a match, else
        all but a possible start of a stop string (needs stop strings)."""
        m = self.matcher
        return m.match if m.match is not None else len(m.buffer) - m.holdback()
