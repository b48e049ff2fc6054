"""Added and special tokens: whole strings cut out of the text before the model sees it.

A Hugging Face ``tokenizer.json`` lists them in ``added_tokens`` with five flags, and
``tokenizers`` splits them out in a fixed way that ids depend on. ``AddedTokenSplitter``
reproduces it (``AddedVocabulary::extract_and_normalize``):

1. tokens with ``normalized=false`` are matched in the raw text, leftmost-longest;
2. every piece of text between them is normalized on its own, and tokens with
   ``normalized=true`` are matched in it (their content normalized the same way).

A match flagged ``single_word`` is dropped (left as ordinary text) when a word character
touches it on either side; ``lstrip`` / ``rstrip`` make the token swallow the whitespace
before / after it (never whitespace an earlier token already took). Word characters and
whitespace are Unicode's (Rust ``regex``'s ``\\w`` and ``\\s``), as in ``tokenizers``.

Special tokens are matched only when ``encode`` is told to (``allowed_special``), so user
text cannot smuggle in a control token; non-special added tokens always match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import regex

from lmkit.errors import TokenizerError

# Rust regex's Unicode \w and \s (what tokenizers' single_word / lstrip / rstrip test)
_WORD_CHAR = regex.compile(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]")
_SPACE_CHAR = regex.compile(r"\p{White_Space}")
_LEADING_SPACE = regex.compile(r"\p{White_Space}*")


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in the text instead of going through the model.

    ``special`` tokens (``<|endoftext|>``) are matched only when ``encode`` is told to
    (``allowed_special``) and may be skipped when decoding; non-special added tokens are
    always matched. ``lstrip`` / ``rstrip`` let the match swallow whitespace on that side,
    ``single_word`` requires word boundaries, ``normalized`` matches the token in the
    normalized text -- the fields of Hugging Face's ``added_tokens``.
    """

    content: str
    id: int
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False


def added_tokens_from_hf(data: dict) -> list[AddedToken]:
    """The ``added_tokens`` of a Hugging Face ``tokenizer.json``."""
    out = []
    for t in data.get("added_tokens") or []:
        special = bool(t.get("special", False))
        out.append(
            AddedToken(
                content=str(t["content"]),
                id=int(t["id"]),
                special=special,
                lstrip=bool(t.get("lstrip", False)),
                rstrip=bool(t.get("rstrip", False)),
                single_word=bool(t.get("single_word", False)),
                normalized=bool(t.get("normalized", not special)),
            )
        )
    return out


def added_tokens_to_hf(tokens: Iterable[AddedToken]) -> list[dict]:
    """`tokens` as the ``added_tokens`` list of a Hugging Face ``tokenizer.json``."""
    return [
        {"id": t.id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
         "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special}
        for t in sorted(tokens, key=lambda t: t.id)
    ]


def allowed_names(allowed_special: str | Iterable[str] | None, specials: frozenset[str]) -> frozenset[str]:
    """The special tokens `allowed_special` lets through: "all", "none" (or None), one name or
    a collection of names; a name that is not one of `specials` is an error."""
    if allowed_special == "all":
        return specials
    if allowed_special == "none" or allowed_special is None:
        return frozenset()
    names = frozenset([allowed_special] if isinstance(allowed_special, str) else allowed_special)
    unknown = names - specials
    if unknown:
        known = ", ".join(sorted(specials)) or "none"
        raise TokenizerError(
            f"unknown special token(s) in allowed_special: {', '.join(sorted(map(repr, unknown)))}; "
            f"this tokenizer's special tokens are: {known}"
        )
    return names


#: one piece of split text: (text, id of the added token or None, whether the piece starts the input)
Piece = tuple[str, "int | None", bool]


class AddedTokenSplitter:
    """Cuts the `tokens` out of a text as ``tokenizers`` does; see the module docstring.

    ``split(text)`` yields ``(piece, id, at_start)``: an added token's content with its id,
    or a normalized stretch of ordinary text with ``None``; ``at_start`` is true for the
    piece that begins at offset 0 of the input (Metaspace's ``prepend_scheme="first"``
    reads it). Empty pieces are left out.
    """

    def __init__(self, tokens: Iterable[AddedToken], normalize: Callable[[str], str] | None = None) -> None:
        tokens = list(tokens)
        self.normalize = normalize
        raw = [t for t in tokens if not t.normalized]
        norm = [t for t in tokens if t.normalized]
        self._raw = _matcher([(t.content, t) for t in raw])
        self._norm = _matcher([(normalize(t.content) if normalize else t.content, t) for t in norm])

    def finds_nothing(self, text: str) -> bool:
        """True when `text` surely holds no added token (then it is one normalized piece)."""
        return self._norm is None and (self._raw is None or self._raw[0].search(text) is None)

    def split(self, text: str) -> Iterator[Piece]:
        for piece, tok, start in _find(text, self._raw):
            if tok is not None:
                yield piece, tok.id, start == 0
                continue
            if self.normalize is not None:
                piece = self.normalize(piece)
            for sub, tok2, sub_start in _find(piece, self._norm):
                if sub:
                    yield sub, (tok2.id if tok2 is not None else None), start == 0 and sub_start == 0


def _matcher(entries: list[tuple[str, AddedToken]]) -> tuple[regex.Pattern, dict[str, AddedToken]] | None:
    """A leftmost-longest literal matcher (alternatives longest first) and content -> token."""
    by_text: dict[str, AddedToken] = {}
    for text, tok in entries:
        if not text:
            raise TokenizerError(f"added token {tok.content!r} is empty (after normalization)")
        by_text.setdefault(text, tok)
    if not by_text:
        return None
    alts = "|".join(regex.escape(s) for s in sorted(by_text, key=len, reverse=True))
    return regex.compile(alts), by_text


def _find(text: str, matcher) -> list[tuple[str, AddedToken | None, int]]:
    """`text` as (piece, token or None, start offset), covering it whole (HF ``find_matches``)."""
    if matcher is None or not text:
        return [(text, None, 0)]
    pattern, by_text = matcher
    out: list[tuple[str, AddedToken | None, int]] = []
    done = 0  # end of what the pieces so far cover
    for m in pattern.finditer(text):
        start, stop = m.span()
        tok = by_text[m.group()]
        if tok.single_word and (
            (start > 0 and _WORD_CHAR.match(text[start - 1])) or (stop < len(text) and _WORD_CHAR.match(text[stop]))
        ):
            continue
        if tok.lstrip:
            while start > done and _SPACE_CHAR.match(text[start - 1]):
                start -= 1
        if tok.rstrip:
            stop = _LEADING_SPACE.match(text, stop).end()
        if done < start:
            out.append((text[done:start], None, done))
        out.append((text[start:stop], tok, start))
        done = stop
    if done < len(text):
        out.append((text[done:], None, done))
    return out
