"""Unicode normalisation and control characters: one spelling for one text.

Web and PDF text mixes composed and decomposed accents (NFC joins them), full-width and
compatibility forms (NFKC folds ｆｕｌｌ to full and ① to 1), Windows line ends, and invisible
characters (NUL, escape codes, zero-width spaces, byte-order marks) that tokenizers turn into
junk tokens. This filter fixes all of them and drops a document that is empty afterwards.
"""

from __future__ import annotations

import re
import unicodedata

from lmkit.data.filters.base import DocumentFilter, Dropped, FilterError, FilterResult

FORMS = ("NFC", "NFKC", "none")
#: C0/C1 controls except tab and newline, plus zero-width and bidi marks and the BOM
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


class UnicodeNormalizer(DocumentFilter):
    """NFC/NFKC, ``\\r\\n`` and ``\\r`` -> ``\\n``, control and zero-width characters removed."""

    name = "unicode"

    def __init__(self, form: str = "NFKC", remove_control: bool = True) -> None:
        if form not in FORMS:
            raise FilterError(f"form={form!r}: choose one of {', '.join(FORMS)}")
        self.form, self.remove_control = form, remove_control

    def apply(self, text: str) -> FilterResult:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.form != "none":
            text = unicodedata.normalize(self.form, text)
        if self.remove_control:
            text = CONTROL_CHARS.sub("", text)
        return text if text.strip() else Dropped("empty")
