"""Streaming: turn tokens into text deltas that never split a character.

Byte-level BPE tokens are byte strings, and a token boundary may fall inside a multi-byte
UTF-8 character (CJK characters are 3 bytes, most emoji 4, and a rare character is often
spread over two or three tokens). Decoding each token on its own would print U+FFFD
replacement characters. `IncrementalDetokenizer` keeps the bytes of an unfinished character
back until the rest arrives, using Python's incremental UTF-8 decoder, whose output over any
split of the bytes equals ``bytes.decode("utf-8", "replace")`` of the whole: so the
concatenated deltas are exactly the non-streamed text.

Tokenizers without byte tokens (anything lacking `token_bytes`) fall back to decoding the
whole output and emitting the new suffix, holding back a trailing U+FFFD.

`TextStream` adds stop strings through a `StopTracker` (stop.py): text that might be the
start of a stop string is held back until the next token shows whether it is; when a stop
string completes the stream ends with the text before it. Given a tracker that also knows
the EOS ids and the token budget (as the serving engine does), the stream is the one place
that says both what text a row has produced and whether it is finished.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Iterator, Sequence

from lmkit.infer.stop import StopTracker, token_bytes_fn


class IncrementalDetokenizer:
    """push(token_id) -> new text (possibly ""); flush() -> whatever is left at the end."""

    def __init__(self, tokenizer, skip_ids: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_ids = frozenset(int(i) for i in skip_ids)
        self.byte_level = callable(getattr(tokenizer, "token_bytes", None))
        self.token_bytes = token_bytes_fn(tokenizer, self.skip_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._emitted = 0  # characters already returned (text fallback)

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id in self.skip_ids:
            return ""
        if self.byte_level:
            return self._decoder.decode(self.tokenizer.token_bytes(token_id))
        self._ids.append(token_id)
        text = self.tokenizer.decode(self._ids)
        end = len(text) - 1 if text.endswith("\ufffd") else len(text)
        delta = text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return delta

    def push_bytes(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        if self.byte_level:
            return self._decoder.decode(b"", final=True)
        text = self.tokenizer.decode(self._ids)
        delta = text[self._emitted :]
        self._emitted = len(text)
        return delta


class TextStream:
    """Text deltas for one generated sequence, with stop strings held back and cut.

    push(token_id) -> delta; `stopped` turns True once the sequence is finished (a stop string
    completed, or, with a `tracker` that knows them, an EOS id or the token budget): the
    caller should stop generating; finish() -> the last delta. tracker: a `StopTracker`
    built with this tokenizer's token bytes; by default one that knows only `stop`.
    """

    def __init__(self, tokenizer, stop: Sequence[str] | None = None, skip_ids: Iterable[int] = (), *,
                 tracker: StopTracker | None = None) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, skip_ids)
        self.tracker = tracker if tracker is not None else StopTracker(stop=stop, token_bytes=self.detok.token_bytes)
        self.matcher = self.tracker.matcher
        self._out = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sent = 0  # bytes of the matcher buffer already decoded and returned

    @property
    def stopped(self) -> bool:
        return self.tracker.done

    @property
    def matched(self) -> str | None:
        reason = self.tracker.stop_reason
        return reason if isinstance(reason, str) else None

    def push(self, token_id: int) -> str:
        if self.tracker.done:
            return ""
        self.tracker.push(token_id)
        if self.matcher is None:
            return self.detok.push(token_id)
        return self._release(self.tracker.shown_bytes(), final=self.matcher.match is not None)

    def finish(self) -> str:
        if self.matcher is None:
            return self.detok.flush()
        end = self.matcher.match if self.matcher.match is not None else len(self.matcher.buffer)
        return self._release(end, final=True)

    def _release(self, end: int, final: bool) -> str:
        end = max(end, self._sent)
        data = bytes(self.matcher.buffer[self._sent : end])
        self._sent = end
        return self._out.decode(data, final=final)


def stream_tokens_to_text(tokenizer, ids: Iterable[int], stop: Sequence[str] | None = None,
                          skip_ids: Iterable[int] = ()) -> Iterator[str]:
    """Deltas for a finished or live iterable of token ids (stops early at a stop string)."""
    stream = TextStream(tokenizer, stop, skip_ids)
    for i in ids:
        delta = stream.push(i)
        if delta:
            yield delta
        if stream.stopped:
            return
    tail = stream.finish()
    if tail:
        yield tail



def decode_output(tokenizer, ids: Sequence[int], stop: Sequence[str] | None, eos: Sequence[int]) -> str:
    """Text of generated ids: EOS dropped, characters never split, cut before a stop string."""
    return "".join(stream_tokens_to_text(tokenizer, ids, stop, skip_ids=eos))
