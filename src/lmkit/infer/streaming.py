"""Streaming: turn a growing list of token ids into text deltas, never splitting a character.

Byte-level BPE tokens are bytes, not characters: "你" is three UTF-8 bytes that may sit in
two tokens, and an emoji's four bytes in up to four. Decoding token by token would print
replacement characters (U+FFFD). `IncrementalDetokenizer` keeps the undecoded tail:
  byte path     tokenizers with ``decode_bytes`` (lmkit's BPE): bytes go through Python's
                incremental UTF-8 decoder, which emits a character once its last byte is
                in and gives exactly what decoding all bytes at once gives;
  text path     any other tokenizer: decode a short window of recent ids and emit the new
                suffix once it no longer ends in U+FFFD (the offsets method of HF's
                TextStreamer and vLLM).
Either way the concatenated deltas (plus `flush()`) equal ``tokenizer.decode(ids)``.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Iterator, Sequence

from lmkit.infer.stop import StopStringMatcher
from lmkit.tokenizers.base import Tokenizer


class IncrementalDetokenizer:
    """``push(id) -> new text``; ``flush() -> the rest`` at the end."""

    def __init__(self, tokenizer: Tokenizer, skip_ids: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip = set(skip_ids)
        self._bytes = hasattr(tokenizer, "decode_bytes")
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if self._bytes else None
        self.ids: list[int] = []
        self._prefix = 0  # text path: ids[_prefix:_read] were decoded and emitted already
        self._read = 0

    def push(self, token_id: int) -> str:
        if token_id in self.skip:
            return ""
        self.ids.append(token_id)
        if self._bytes:
            return self._decoder.decode(self.tokenizer.decode_bytes([token_id]))
        prefix_text = self.tokenizer.decode(self.ids[self._prefix:self._read])
        new_text = self.tokenizer.decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            # the ids just read become the context window for the next ones
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        if self._bytes:
            return self._decoder.decode(b"", final=True)
        prefix_text = self.tokenizer.decode(self.ids[self._prefix:self._read])
        new_text = self.tokenizer.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text):]


class TextStream:
    """One row's visible text: incremental detokenisation followed by stop-string matching.

    ``push(id) -> (delta, stop)``: the text to show now and the stop string matched (or None);
    ``finish() -> (delta, stop)`` at the end. The deltas concatenate to the decoded ids
    (without `skip_ids`, e.g. EOS) cut before the earliest stop string.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] | None = None, skip_ids: Iterable[int] = ()) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, skip_ids)
        self.matcher = StopStringMatcher(stop) if stop else None
        self.text = ""  # everything emitted so far

    def _emit(self, delta: str, final: bool) -> tuple[str, str | None]:
        if self.matcher is None:
            self.text += delta
            return delta, None
        out, matched = self.matcher.feed(delta)
        if final and matched is None:
            out += self.matcher.flush()
        self.text += out
        return out, matched

    def push(self, token_id: int) -> tuple[str, str | None]:
        return self._emit(self.detok.push(token_id), final=False)

    def finish(self) -> tuple[str, str | None]:
        return self._emit(self.detok.flush(), final=True)


def stream_text(model, tokenizer: Tokenizer, prompt: str, config=None, **overrides) -> Iterator[str]:
    """Text deltas of the completion of `prompt` (see `lmkit.infer.generate.stream_generate`)."""
    from lmkit.infer.generate import stream_generate

    for delta in stream_generate(model, tokenizer, prompt, config, **overrides):
        if delta.text:
            yield delta.text
