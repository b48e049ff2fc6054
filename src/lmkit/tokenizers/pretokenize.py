"""Pre-tokenization: split text into "words" before BPE sees it.

BPE merges never cross a pre-token boundary, so the split regex decides what a token
can be (no token spans a letter and a following space-less digit run, etc.). The two
standard patterns:

* ``gpt2``   — GPT-2 / Hugging Face ``ByteLevel(use_regex=True)``: contractions, an
  optional leading space glued to letters / digits / punctuation runs, whitespace runs.
* ``cl100k`` — GPT-4 (tiktoken ``cl100k_base``; also Llama-3): case-insensitive
  contractions, numbers split into groups of at most 3 digits, newlines kept apart.

Patterns are compiled once with the ``regex`` module (``\\p{L}`` and possessive
quantifiers need it). A split keeps every character: text that the pattern does not
match (possible with a custom pattern) becomes a piece of its own, as in Hugging Face's
``Split(behavior="Isolated")``.
"""

from __future__ import annotations

import re
from functools import lru_cache

import regex

from lmkit.errors import TokenizerError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# tiktoken writes the digit group as ``\p{N}{1,3}+`` (possessive). Nothing follows it inside its
# alternative, so plain ``{1,3}`` means the same -- and Oniguruma (Hugging Face's regex engine)
# would read ``{1,3}+`` as "one or more groups of 1-3 digits", so exported files use this form.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

#: pattern name -> regex source
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN}

# ASCII fast path. On pure-ASCII text \p{L} is [A-Za-z], \p{N} is [0-9] and \s (Unicode
# White_Space) is [\t\n\v\f\r ], so these stdlib-`re` patterns split exactly like the ones
# above -- about 2x faster. Long texts are cut into ~2 KB chunks right after an ASCII
# letter/digit that is followed by "\n": no piece of either pattern spans that point, so
# chunking changes nothing, and each chunk uses the fast pattern when it is ASCII.
_ASCII_SOURCES = {
    GPT2_PATTERN: r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""",
    CL100K_PATTERN: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?+[A-Za-z]++|[0-9]{1,3}| ?[^\sA-Za-z0-9]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
}
_CHUNK = 1 << 11
_CHUNK_END = re.compile(r"[A-Za-z0-9]\n")


def _ascii_twin(source: str) -> re.Pattern | None:
    twin = _ASCII_SOURCES.get(source)
    if twin is None:
        return None
    try:
        return re.compile(twin, re.ASCII)
    except re.error:  # possessive quantifiers need Python >= 3.11
        return None


def _split_known(pat: regex.Pattern, fast: re.Pattern, text: str) -> list[str]:
    """`pat.findall(text)` for a known pattern that covers every character, using `fast` on ASCII chunks."""
    if len(text) <= _CHUNK:
        return (fast if text.isascii() else pat).findall(text)
    out: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _CHUNK_END.search(text, pos + _CHUNK) if pos + _CHUNK < n else None
        end = m.start() + 1 if m else n
        chunk = text[pos:end]
        out += (fast if chunk.isascii() else pat).findall(chunk)
        pos = end
    return out


def resolve_pattern(pattern: str | None) -> str | None:
    """A pattern name (``gpt2``, ``cl100k``) or a regex source -> regex source (checked)."""
    if pattern is None:
        return None
    source = PATTERNS.get(pattern, pattern)
    compile_pattern(source)
    return source


def pattern_name(source: str | None) -> str | None:
    """The short name of a known pattern source, else ``None``."""
    for name, known in PATTERNS.items():
        if source == known:
            return name
    return None


@lru_cache(maxsize=64)
def compile_pattern(source: str) -> regex.Pattern:
    try:
        return regex.compile(source)
    except regex.error as exc:
        raise TokenizerError(f"invalid pre-tokenizer regex {source!r}: {exc}") from exc


def split_isolated(pat: regex.Pattern, text: str) -> list[str]:
    """Matches of `pat` plus the unmatched gaps between them, in order (nothing dropped)."""
    if not pat.groups:  # findall returns whole matches only when there are no groups
        words = pat.findall(text)
        if sum(map(len, words)) == len(text):  # the usual case: the pattern covers everything
            return words
    out: list[str] = []
    pos = 0
    for m in pat.finditer(text):
        start, end = m.span()
        if start > pos:
            out.append(text[pos:start])
        if end > start:
            out.append(text[start:end])
        pos = end
    if pos < len(text):
        out.append(text[pos:])
    return out


class PreTokenizer:
    """A pipeline of splitting steps, applied to every piece produced by the step before.

    Steps (as stored in lmkit's JSON): ``{"type": "split", "pattern": SOURCE}`` and
    ``{"type": "prefix_space"}`` (prepend a space to each piece that does not start with
    one: Hugging Face's ``ByteLevel(add_prefix_space=True)``, GPT-2 style "Ġhello" for a
    leading word). One ``split`` step, the usual case, runs as a single ``findall``.
    """

    def __init__(self, steps: list[dict] | None = None) -> None:
        self.steps: list[dict] = []
        for step in steps or []:
            kind = step.get("type") if isinstance(step, dict) else None
            if kind == "split":
                source = step.get("pattern")
                if not isinstance(source, str):
                    raise TokenizerError(f"pre-tokenizer split step needs a regex string, got {source!r}")
                compile_pattern(source)
                self.steps.append({"type": "split", "pattern": source})
            elif kind == "prefix_space":
                self.steps.append({"type": "prefix_space"})
            else:
                raise TokenizerError(f"unknown pre-tokenizer step {step!r} (expected split or prefix_space)")
        self._single = (
            compile_pattern(self.steps[0]["pattern"])
            if len(self.steps) == 1 and self.steps[0]["type"] == "split"
            else None
        )
        self._fast = _ascii_twin(self.steps[0]["pattern"]) if self._single is not None else None

    @classmethod
    def from_pattern(cls, pattern: str | None, add_prefix_space: bool = False) -> "PreTokenizer":
        """The common form: optional prefix space, then one split regex (name or source)."""
        steps: list[dict] = [{"type": "prefix_space"}] if add_prefix_space else []
        source = resolve_pattern(pattern)
        if source is not None:
            steps.append({"type": "split", "pattern": source})
        return cls(steps)

    @property
    def pattern(self) -> str | None:
        """The regex source of the last split step (what a reader usually wants to know)."""
        splits = [s["pattern"] for s in self.steps if s["type"] == "split"]
        return splits[-1] if splits else None

    def __call__(self, text: str) -> list[str]:
        if self._fast is not None:
            return _split_known(self._single, self._fast, text)
        if self._single is not None:
            return split_isolated(self._single, text)
        pieces = [text]
        for step in self.steps:
            if step["type"] == "prefix_space":
                pieces = [p if p.startswith(" ") else " " + p for p in pieces if p]
            else:
                pat = compile_pattern(step["pattern"])
                pieces = [w for p in pieces for w in split_isolated(pat, p)]
        return [p for p in pieces if p]

    def to_list(self) -> list[dict]:
        return [dict(s) for s in self.steps]


# ---- Hugging Face tokenizer.json form (byte-level BPE) ---------------------------------
def byte_level_from_hf(obj: dict | None) -> PreTokenizer:
    """A Hugging Face byte-level ``pre_tokenizer`` object (ByteLevel, optionally after Split /
    Digits steps) as a `PreTokenizer`; anything else is refused."""
    if obj is None:
        raise TokenizerError("no pre_tokenizer: this BPE is not byte-level (ByteLevel pre-tokenizer missing)")
    parts = obj.get("pretokenizers", []) if obj.get("type") == "Sequence" else [obj]
    if not parts or parts[-1].get("type") != "ByteLevel":
        raise TokenizerError(
            "only byte-level BPE is supported: the pre-tokenizer must end with ByteLevel "
            f"(got {[p.get('type') for p in parts]})"
        )
    steps: list[dict] = []
    for part in parts:
        kind = part.get("type")
        if kind == "ByteLevel":
            if part is not parts[-1]:
                raise TokenizerError("ByteLevel must be the last pre-tokenizer step")
            if part.get("add_prefix_space", True):
                steps.append({"type": "prefix_space"})
            if part.get("use_regex", True):
                steps.append({"type": "split", "pattern": GPT2_PATTERN})
        elif kind == "Split":
            if part.get("behavior", "Isolated") != "Isolated" or part.get("invert", False):
                raise TokenizerError(
                    f"Split pre-tokenizer with behavior={part.get('behavior')!r} invert={part.get('invert')!r} "
                    "is not supported (only Isolated, invert=false)"
                )
            pat = part["pattern"]
            source = pat["Regex"] if "Regex" in pat else regex.escape(pat["String"])
            steps.append({"type": "split", "pattern": source})
        elif kind == "Digits":
            steps.append({"type": "split", "pattern": r"\p{N}" if part.get("individual_digits") else r"\p{N}+"})
        else:
            raise TokenizerError(f"pre-tokenizer {kind!r} is not supported for byte-level BPE")
    return PreTokenizer(steps)


def byte_level_to_hf(pre: PreTokenizer) -> dict:
    """`pre` as a Hugging Face ``pre_tokenizer`` object ending with ByteLevel."""
    steps = pre.to_list()
    use_regex = add_prefix_space = False
    if steps and steps[-1] == {"type": "split", "pattern": GPT2_PATTERN}:
        use_regex = True
        steps.pop()
    if steps and steps[-1]["type"] == "prefix_space":
        add_prefix_space = True
        steps.pop()
    if any(s["type"] != "split" for s in steps):
        raise TokenizerError(
            "this pre-tokenizer cannot be written as tokenizer.json: a prefix space is only "
            "expressible right before the GPT-2 split or at the end"
        )
    byte_level = {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
                  "use_regex": use_regex}
    if not steps:
        return byte_level
    splits = [{"type": "Split", "pattern": {"Regex": s["pattern"]}, "behavior": "Isolated", "invert": False}
              for s in steps]
    return {"type": "Sequence", "pretokenizers": splits + [byte_level]}
