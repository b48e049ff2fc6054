"""Text normalizers of Hugging Face ``tokenizer.json`` files, as ``str -> str`` steps.

SentencePiece-style BPE files (Llama 2, Phi-3, Gemma) do their whitespace handling here:
``Sequence[Prepend("▁"), Replace(" ", "▁")]`` (Llama 2) or ``Replace(" ", "▁")`` (Gemma).
``tokenizers`` runs the normalizer on each stretch of text between added tokens on its own
(so ``Prepend`` adds a ``▁`` to every stretch); ``added_tokens.AddedTokenSplitter`` calls
it that way. Understood: ``Sequence``, ``Replace`` (string or regex), ``Prepend``,
``NFC``/``NFD``/``NFKC``/``NFKD``, ``Lowercase`` and ``Strip``; anything else is refused.
"""

from __future__ import annotations

import unicodedata

import regex

from lmkit.errors import TokenizerError
from lmkit.tokenizers.hf_component import HfComponent

_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_SPACE = regex.compile(r"\p{White_Space}+")


def pattern_from_hf(pattern: dict) -> regex.Pattern:
    """``{"String": s}`` (literal) or ``{"Regex": r}`` as a compiled pattern."""
    if "String" in pattern:
        return regex.compile(regex.escape(pattern["String"]))
    if "Regex" in pattern:
        try:
            return regex.compile(pattern["Regex"])
        except regex.error as exc:
            raise TokenizerError(f"invalid regex {pattern['Regex']!r}: {exc}") from None
    raise TokenizerError(f"pattern {pattern!r} is neither a String nor a Regex")


class TextNormalizer(HfComponent):
    """A chain of normalizer steps read from (and written back as) a ``normalizer`` object."""

    def _read(self, obj: dict) -> None:
        kind = obj.get("type")
        if kind == "Sequence":
            for part in obj.get("normalizers") or []:
                self._read(part)
        elif kind == "Replace":
            pat, content = pattern_from_hf(obj["pattern"]), str(obj["content"])
            self._steps.append(lambda s: pat.sub(lambda _m: content, s))
        elif kind == "Prepend":
            prefix = str(obj["prepend"])
            self._steps.append(lambda s: prefix + s if s else s)
        elif kind in _FORMS:
            self._steps.append(lambda s, form=kind: unicodedata.normalize(form, s))
        elif kind == "Lowercase":
            self._steps.append(str.lower)
        elif kind == "Strip":
            left, right = bool(obj.get("strip_left", True)), bool(obj.get("strip_right", True))
            self._steps.append(lambda s: _strip(s, left, right))
        else:
            raise TokenizerError(
                f"normalizer {kind!r} is not supported (supported: Sequence, Replace, Prepend, NFC, NFD, "
                "NFKC, NFKD, Lowercase, Strip)"
            )

    def __bool__(self) -> bool:
        return bool(self._steps)

    def __call__(self, text: str) -> str:
        for step in self._steps:
            text = step(text)
        return text



def _strip(text: str, left: bool, right: bool) -> str:
    if left:
        m = _SPACE.match(text)
        text = text[m.end():] if m else text
    if right:
        m = regex.search(r"\p{White_Space}+\Z", text)
        text = text[: m.start()] if m else text
    return text
