"""Maximum matching: the classic dictionary-driven segmenters.

FMM (forward) scans left to right taking the longest dictionary word at each position;
BMM (backward) scans right to left. Neither needs statistics, and both fail on the
ambiguities they are famous for: 研究生命起源 gives FMM 研究生/命/起源 but BMM 研究/生命/起源.
BiMM runs both and keeps the better one by these rules, in order:
  1. fewer words;
  2. fewer single-character words;
  3. fewer out-of-dictionary words;
  4. still tied: BMM (backward matching is right more often on Chinese; Sun & Zou 2001).
A character that starts no dictionary word becomes a one-character word.
"""

from __future__ import annotations

from lmkit.tokenizers.segment.dictionary import Dictionary


def forward_max_match(text: str, dictionary: Dictionary, max_len: int | None = None) -> list[str]:
    freq = dictionary.freq
    max_len = max_len or dictionary.max_word_len
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        end = i + 1  # fall back to one character
        j = i + 1
        limit = min(n, i + max_len)
        while j <= limit:
            f = freq.get(text[i:j])
            if f is None:
                break  # no word continues with this prefix
            if f:
                end = j
            j += 1
        out.append(text[i:end])
        i = end
    return out


def backward_max_match(text: str, dictionary: Dictionary, max_len: int | None = None) -> list[str]:
    rev = dictionary.reverse
    max_len = max_len or dictionary.max_word_len
    out: list[str] = []
    j = len(text)
    while j > 0:
        start = j - 1
        i = j - 1
        limit = max(0, j - max_len)
        while i >= limit:
            f = rev.get(text[i:j][::-1])
            if f is None:
                break
            if f:
                start = i
            i -= 1
        out.append(text[start:j])
        j = start
    out.reverse()
    return out


def _score(words: list[str], dictionary: Dictionary) -> tuple[int, int, int]:
    singles = sum(1 for w in words if len(w) == 1)
    oov = sum(1 for w in words if w not in dictionary)
    return len(words), singles, oov


def bidirectional_max_match(text: str, dictionary: Dictionary, max_len: int | None = None) -> list[str]:
    fwd = forward_max_match(text, dictionary, max_len)
    bwd = backward_max_match(text, dictionary, max_len)
    if fwd == bwd:
        return bwd
    return fwd if _score(fwd, dictionary) < _score(bwd, dictionary) else bwd
