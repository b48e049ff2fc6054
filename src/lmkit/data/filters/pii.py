"""PII masking: e-mail addresses, phone numbers, IP addresses and ID-like numbers.

A model memorises what it sees often and sometimes what it sees once; personal data in the
pretraining set can come back out. Each match is replaced by a tag (``<EMAIL>``,
``<PHONE>``, ``<IP_ADDRESS>``, ``<ID>``), the document kept, and the matches counted.

* e-mail: ``local@domain.tld`` (RFC 5322's common subset);
* IPv4: four dotted numbers 0..255 (``999.1.1.1`` is not an address); IPv6: any candidate
  the standard library's `ipaddress` accepts (full, ``::``-compressed, IPv4-suffixed) with three
  or more groups, or two with five hex digits (``fe80::1``; ``a::b`` in code is left alone);
* phone: international ``+CC`` numbers, North-American ``(555) 123-4567`` / ``555-123-4567``,
  Chinese mobile numbers (``1[3-9]`` + 9 digits);
* ID-like: Chinese resident ID (17 digits + digit/X, with a valid birth date), US SSN
  ``ddd-dd-dddd``, and payment-card numbers of 13..19 digits that pass the Luhn check.

Order matters: e-mails and IPs go first so their digits are not read as phone numbers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

from lmkit.data.filters.base import DocumentFilter, FilterError, FilterResult

KINDS = ("email", "ip", "id", "phone")
TAGS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "id": "<ID>", "phone": "<PHONE>"}

EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]\d)")
IPV6_CANDIDATE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
CN_ID = re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z])")
SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    r"(?<![A-Za-z0-9_+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"  # international
    r"|\(\d{3}\)\s?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|1[3-9]\d{9}"  # Chinese mobile
    r")(?![A-Za-z0-9_])"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment-card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ipv6(match: re.Match) -> str:
    s = match.group(0)
    groups = [g for g in re.split(r"[:.]", s) if g]
    hex_chars = sum(len(g) for g in groups)
    # "a::b" in code is a valid address too: ask for three groups, or two with 5+ hex digits and a digit
    if len(groups) < 3 and not (len(groups) == 2 and hex_chars >= 5 and any(c.isdigit() for c in s)):
        return s
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return s
    return TAGS["ip"]


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return TAGS["id"] if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


class PIIMasker(DocumentFilter):
    """Replace the PII `kinds` in a document by tags; never drops. `counts` sums the masks."""

    name = "pii"

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self.kinds = list(kinds)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise FilterError(f"unknown PII kinds {unknown}: choose from {', '.join(KINDS)}")
        self.counts: dict[str, int] = {k: 0 for k in self.kinds}

    def _sub(self, pattern: re.Pattern, repl, text: str, kind: str) -> str:
        out, n = pattern.subn(repl, text)
        if callable(repl):  # only the replacements that changed something count
            n = out.count(TAGS[kind]) - text.count(TAGS[kind])
        self.counts[kind] += n
        return out

    def mask(self, text: str) -> str:
        """`text` with every PII match replaced by its tag."""
        if "email" in self.kinds:
            text = self._sub(EMAIL, TAGS["email"], text, "email")
        if "ip" in self.kinds:
            text = self._sub(IPV4, TAGS["ip"], text, "ip")
            if ":" in text:
                text = self._sub(IPV6_CANDIDATE, _ipv6, text, "ip")
        if "id" in self.kinds:
            text = self._sub(CN_ID, TAGS["id"], text, "id")
            text = self._sub(SSN, TAGS["id"], text, "id")
            text = self._sub(CARD, _card, text, "id")
        if "phone" in self.kinds:
            text = self._sub(PHONE, TAGS["phone"], text, "phone")
        return text

    def apply(self, text: str) -> FilterResult:
        return self.mask(text)
