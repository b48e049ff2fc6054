"""Metaspace: SentencePiece's whitespace convention as a ``tokenizer.json`` pre-tokenizer.

Every space becomes ``▁`` (the `replacement`) and a ``▁`` is put in front of the text
(`prepend_scheme`: ``always``; ``first``: only on the stretch that starts the input, not
after an added token; ``never``), so "Hello world" becomes "▁Hello▁world". With
``split=True`` the text is then cut before every ``▁`` ("▁Hello", "▁world"); with
``split=False`` it stays one word (Llama 2 after ``legacy=False``). The decoder of the same
name turns ``▁`` back into spaces, dropping them from the first token unless the scheme is
``never``. Behaviour follows Hugging Face ``tokenizers`` >= 0.19.
"""

from __future__ import annotations

from lmkit.errors import TokenizerError

SCHEMES = ("always", "first", "never")


class Metaspace:
    """``words(text, at_start)``: the pre-tokens of one stretch of text."""

    def __init__(self, replacement: str = "\u2581", prepend_scheme: str = "always", split: bool = True) -> None:
        if len(replacement) != 1:
            raise TokenizerError(f"Metaspace replacement must be one character, got {replacement!r}")
        if prepend_scheme not in SCHEMES:
            raise TokenizerError(f"Metaspace prepend_scheme must be one of {SCHEMES}, got {prepend_scheme!r}")
        self.replacement = replacement
        self.prepend_scheme = prepend_scheme
        self.split = bool(split)

    @classmethod
    def from_hf(cls, obj: dict) -> "Metaspace":
        scheme = obj.get("prepend_scheme")
        if scheme is None:  # files from before tokenizers 0.19
            scheme = "always" if obj.get("add_prefix_space", True) else "never"
        return cls(str(obj.get("replacement", "\u2581")), str(scheme).lower(), obj.get("split", True))

    def to_hf(self) -> dict:
        return {"type": "Metaspace", "replacement": self.replacement, "prepend_scheme": self.prepend_scheme,
                "split": self.split}

    def words(self, text: str, at_start: bool) -> list[str]:
        rep = self.replacement
        text = text.replace(" ", rep)
        if not text.startswith(rep) and (
            self.prepend_scheme == "always" or (self.prepend_scheme == "first" and at_start)
        ):
            text = rep + text
        if not self.split:
            return [text] if text else []
        out: list[str] = []
        start = 0
        for i, c in enumerate(text):
            if c == rep and i > start:
                out.append(text[start:i])
                start = i
        if start < len(text):
            out.append(text[start:])
        return out

    def decode_chain(self, tokens: list[str]) -> list[str]:
        """The decoder: ``▁`` -> space, none for the first token unless the scheme is ``never``."""
        rep = self.replacement
        first = "" if self.prepend_scheme != "never" else " "
        return [t.replace(rep, first if i == 0 else " ") for i, t in enumerate(tokens)]
