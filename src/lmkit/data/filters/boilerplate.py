"""Boilerplate lines: navigation, cookie banners, share buttons and legal footers.

Pages scraped from the web carry the same dozen lines on every page ("Accept cookies",
"Share on Facebook", "All rights reserved", "Home | About | Contact"). They teach a model
nothing but to repeat them. This filter removes such lines (a list of patterns, extendable)
and drops a document that is left with nothing.
"""

from __future__ import annotations

import re
from typing import Iterable

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterResult

BOILERPLATE_PATTERNS = (
    r"\b(accept|use of|uses|we use) cookies\b",
    r"\bcookie (policy|settings|preferences)\b",
    r"\bprivacy policy\b",
    r"\bterms (of use|of service|and conditions)\b",
    r"\ball rights reserved\b",
    r"^\s*(copyright|©|\(c\))\s*(©\s*)?\d{4}",
    r"\b(share|follow us|like us) on (facebook|twitter|x|linkedin|instagram|weibo|wechat)\b",
    r"\b(sign in|sign up|log in|login|register|subscribe)( now| here| today)?\s*[!.]?\s*$",
    r"\bclick here\b",
    r"\bread more\s*[»>.…]*\s*$",
    r"\bskip to (main )?content\b",
    r"\b(enable|requires) javascript\b",
    r"^\s*(home|about|contact|blog|news|products|services|faq)(\s*[|/·•»>]\s*(home|about( us)?|contact( us)?|blog|news|products|services|faq))+\s*$",
    r"(版权所有|免责声明|点击这里|关注我们|扫码关注|登录|注册|上一篇|下一篇|分享到)",
)


class BoilerplateLines(DocumentFilter):
    """Remove lines matching `patterns` (case-insensitive); drop a document left empty."""

    name = "boilerplate"

    def __init__(self, patterns: Iterable[str] = BOILERPLATE_PATTERNS, max_line_chars: int = 200) -> None:
        self.patterns = list(patterns)
        self.max_line_chars = max_line_chars  # a long line is prose that happens to mention a phrase
        self._regex = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE | re.MULTILINE)

    def is_boilerplate(self, line: str) -> bool:
        return len(line) <= self.max_line_chars and self._regex.search(line) is not None

    def apply(self, text: str) -> FilterResult:
        lines = text.split("\n")
        kept = [line for line in lines if not self.is_boilerplate(line)]
        if len(kept) == len(lines):
            return text
        out = "\n".join(kept).strip("\n")
        return out if out.strip() else Dropped("only_boilerplate")
