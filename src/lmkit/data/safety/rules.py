"""The rule layer of moderation: word lists and regexes per category, Chinese-aware.

A category has `terms` (plain words or phrases), `patterns` (regexes) and `allow` (regexes
of harmless uses that are blanked out before matching: "kill a process", "杀毒软件",
"suicide prevention"). Text is normalised first (`normalize`): NFKC (full-width letters and
digits become ASCII), lower case, zero-width characters removed. Then:

* an English term matches at word boundaries, also in "leet" spelling (k1ll, $uicide);
* a Chinese term (any Han character in it) matches as a substring of the text with every
  space, punctuation mark and symbol removed, so "自 杀", "自*杀" and "自。杀" are caught
  (Chinese has no spaces between words, so word boundaries mean nothing there);
* a pattern matches the normalised text.

The default lists (`DEFAULT_RULES`) are deliberately short and precise: they catch the
explicit cases, the classifier (classifier.py) generalises. A JSON file with the same shape
({"category": {"terms": [...], "patterns": [...], "allow": [...]}}) replaces or extends
them (`RuleSet.from_file`, `lmkit serve --moderation-config`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError
from lmkit.jsonl import read_json_object

CATEGORIES = ("violence", "self_harm", "hate", "sexual", "pii")

_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_NOT_WORD = re.compile(r"[\W_]+", flags=re.UNICODE)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})

DEFAULT_RULES: dict[str, dict[str, list[str]]] = {
    "violence": {
        "terms": ["murder", "massacre", "behead", "slaughter", "strangle", "gun down", "beat to death",
                  "make a bomb", "build a bomb", "take hostages",
                  "杀死", "杀掉", "弄死", "砍死", "炸死", "捅死", "毒死", "掐死", "枪杀", "谋杀", "屠杀", "干掉", "劫持人质"],
        "patterns": [r"\b(kill|stab|shoot|poison|torture)\w*\s+(him|her|them|everyone|people|someone|my\s+\w+|the\s+"
                     r"(teacher|guards?|police|crowd|children|kids?)|a\s+(child|kid|police\s+officer|crowd))\b"],
        "allow": [r"\bkill\w*\s+(a|the|all|this)?\s*(child\s+)?(process|processes|thread|task|job)\w*",
                  r"杀掉(一个|这个)?进程", r"杀毒", r"\bkiller\s+whales?\b"],
    },
    "self_harm": {
        "terms": ["kill myself", "end my life", "commit suicide", "take my own life", "slit my wrists", "hang myself",
                  "end it all", "cut myself", "starve myself",
                  "自杀", "轻生", "割腕", "寻死", "了结自己", "自尽", "结束自己的生命", "自残"],
        "patterns": [r"\b(want|going|plan\w*|decided)\s+to\s+(die|suicide)\b", r"\bhow many pills\b.*\b(die|dead|overdose)\b"],
        "allow": [r"suicide\s+prevention", r"预防自杀", r"自杀干预"],
    },
    "hate": {
        "terms": ["subhuman", "vermin", "cockroaches", "genetically inferior", "deport them all", "wiped out",
                  "劣等人", "低贱", "害虫", "不配有人权", "清除出去", "低等"],
        "patterns": [r"\b(are|is)\s+(all\s+)?(animals|a disease|inferior|stupid and inferior)\b",
                     r"\bcleanse\s+(our|the)\s+\w+\s+of\b"],
        "allow": [],
    },
    "sexual": {
        "terms": ["porn", "pornographic", "xxx", "nsfw", "nude photos", "orgasm", "explicit sex", "hardcore",
                  "色情", "裸照", "做爱", "性爱", "淫秽", "性交", "裸体", "脱光", "黄色图片"],
        "patterns": [r"\b(explicit|graphic)\b.{0,30}\b(sex|scene|act)\w*", r"\bnaked\b", r"\bdirty\s+(sex\s+)?(story|talk)\b"],
        "allow": [r"sex\s+(chromosome|education|ratio)"],
    },
    "pii": {"terms": [], "patterns": [], "allow": []},  # e-mail, phone, ID and card numbers: data/filters/pii.py
}


def normalize(text: str) -> str:
    """NFKC, lower case, no zero-width characters: the form every rule is matched against."""
    return _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text)).lower()


def compact(text: str) -> str:
    """The normalised text without spaces, punctuation or symbols (for Chinese terms)."""
    return _NOT_WORD.sub("", text)


@dataclass
class CategoryRules:
    """The compiled terms, patterns and allow-list of one category."""

    name: str
    terms: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self._patterns = [re.compile(p) for p in self.patterns]
            self._allow = [re.compile(p) for p in self.allow]
        except re.error as exc:
            raise ConfigError(f"moderation rules of {self.name!r}: bad regex ({exc})") from None
        self._han_terms = [compact(normalize(t)) for t in self.terms if _HAN.search(t)]
        words = [normalize(t) for t in self.terms if not _HAN.search(t)]
        self._words = re.compile(r"\b(" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words) + r")\b") \
            if words else None

    def matches(self, text: str) -> list[str]:
        """What matched in `text` (already normalised): terms and pattern hits."""
        for allow in self._allow:
            text = allow.sub(" ", text)
        found = []
        if self._words is not None:
            found += [m.group(0) for m in self._words.finditer(text)]
            leet = text.translate(_LEET)
            if leet != text:
                found += [m.group(0) for m in self._words.finditer(leet) if m.group(0) not in found]
        if self._han_terms:
            flat = compact(text)
            found += [t for t in self._han_terms if t in flat]
        for p in self._patterns:
            m = p.search(text)
            if m:
                found.append(m.group(0))
        return found


class RuleSet:
    """Rules for several categories; `match(text)` -> {category: [what matched]} (hits only)."""

    def __init__(self, rules: dict[str, dict[str, Any]] | None = None) -> None:
        rules = DEFAULT_RULES if rules is None else rules
        self.categories = {name: CategoryRules(name, **_check(name, spec)) for name, spec in rules.items()}

    @classmethod
    def from_file(cls, path: str | Path, extend: bool = True) -> "RuleSet":
        """Rules from a JSON file; extend: add to the defaults (else replace them)."""
        data = read_json_object(path, "moderation rules")
        return cls(merge_rules(DEFAULT_RULES, data) if extend else data)

    def match(self, text: str) -> dict[str, list[str]]:
        norm = normalize(text)
        hits = {name: rules.matches(norm) for name, rules in self.categories.items()}
        return {name: found for name, found in hits.items() if found}


def merge_rules(base: dict[str, dict[str, list[str]]], extra: dict[str, dict[str, list[str]]]) -> dict:
    """`base` with each category's lists extended by `extra`'s (new categories added)."""
    out = {name: {k: list(v) for k, v in spec.items()} for name, spec in base.items()}
    for name, spec in extra.items():
        target = out.setdefault(name, {"terms": [], "patterns": [], "allow": []})
        for key, values in _check(name, spec).items():
            target.setdefault(key, []).extend(values)
    return out


def _check(name: str, spec: Any) -> dict[str, list[str]]:
    if not isinstance(spec, dict) or set(spec) - {"terms", "patterns", "allow"}:
        raise ConfigError(f"moderation rules of {name!r} must be an object with terms / patterns / allow lists")
    for key, values in spec.items():
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"moderation rules {name}.{key} must be a list of non-empty strings")
    return spec
