"""Decoders of SentencePiece-style ``tokenizer.json`` files: token strings -> text.

Llama 2 / Phi-3 decode with ``Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]``,
Gemma without the ``Strip``, Metaspace files with ``Metaspace``. Each step maps a list of
token strings to a list of strings, as in ``tokenizers``; the text is their concatenation:

* ``Replace``: a pattern replaced in every token;
* ``ByteFallback``: runs of ``<0x..>`` tokens become the text of their bytes (one U+FFFD per
  byte when they are not valid UTF-8);
* ``Fuse``: all tokens joined into one;
* ``Strip``: up to `start` leading and `stop` trailing `content` characters cut off each token;
* ``Metaspace``: see ``metaspace.py``.
"""

from __future__ import annotations

from lmkit.errors import TokenizerError
from lmkit.tokenizers.hf_component import HfComponent
from lmkit.tokenizers.hf_normalizers import pattern_from_hf
from lmkit.tokenizers.metaspace import Metaspace

_HEX = frozenset("0123456789abcdefABCDEF")


class TokenDecoder(HfComponent):
    """A chain of decoder steps read from (and written back as) a ``decoder`` object."""

    def _read(self, obj: dict) -> None:
        kind = obj.get("type")
        if kind == "Sequence":
            for part in obj.get("decoders") or []:
                self._read(part)
        elif kind == "Replace":
            pat, content = pattern_from_hf(obj["pattern"]), str(obj["content"])
            self._steps.append(lambda toks: [pat.sub(lambda _m: content, t) for t in toks])
        elif kind == "ByteFallback":
            self._steps.append(byte_fallback)
        elif kind == "Fuse":
            self._steps.append(lambda toks: ["".join(toks)])
        elif kind == "Strip":
            content, start, stop = str(obj["content"]), int(obj.get("start", 0)), int(obj.get("stop", 0))
            self._steps.append(lambda toks: [_strip(t, content, start, stop) for t in toks])
        elif kind == "Metaspace":
            self._steps.append(Metaspace.from_hf(obj).decode_chain)
        else:
            raise TokenizerError(
                f"decoder {kind!r} is not supported here (supported: Sequence, Replace, ByteFallback, Fuse, "
                "Strip, Metaspace)"
            )

    def __call__(self, tokens: list[str]) -> str:
        if self.hf is None:  # tokenizers joins tokens with spaces when there is no decoder
            return " ".join(tokens)
        for step in self._steps:
            tokens = step(tokens)
        return "".join(tokens)



def byte_token_value(token: str) -> int | None:
    """``"<0x41>"`` -> 0x41; anything else -> None."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">") and all(c in _HEX for c in token[3:5]):
        return int(token[3:5], 16)
    return None


def byte_fallback(tokens: list[str]) -> list[str]:
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending.clear()

    for t in tokens:
        b = byte_token_value(t)
        if b is None:
            flush()
            out.append(t)
        else:
            pending.append(b)
    flush()
    return out


def _strip(token: str, content: str, start: int, stop: int) -> str:
    a = 0
    while a < min(start, len(token)) and token[a] == content:
        a += 1
    b = len(token)
    for _ in range(stop):
        if b > a and token[b - 1] == content:
            b -= 1
        else:
            break
    return token[a:b]
