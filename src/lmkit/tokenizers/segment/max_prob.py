"""Maximum-probability segmentation: the most likely path through the word DAG.

Every dictionary word found in the sentence is an edge of a DAG over character positions.
With a unigram model P(w) = freq(w) / total, the best segmentation maximises
sum(log P(w)); dynamic programming from the end of the sentence finds it:

    best[i] = max over words s[i:j] of  (log freq(s[i:j]) - log total) + best[j]

Ties go to the longer word. A character that starts no word scores log(1 / total), the
probability of a word seen once. This is jieba's algorithm with its HMM off
(``jieba.lcut(s, HMM=False)``), reproduced exactly, floating-point operations included —
and so is the way it treats text around the Chinese:

* the text is cut into blocks of ``[\\u4e00-\\u9fd5a-zA-Z0-9+#&._%-]+``; only blocks are
  segmented with the DAG (so letters and digits take part, and dictionary words such as
  "T恤" or "B超" are found);
* between blocks, ``\\r\\n`` and each whitespace character are tokens, and every other
  character (punctuation, emoji, CJK outside the basic block) is a token of its own;
* inside a block, consecutive one-character ASCII letters/digits on the best path are glued
  back together, so "GPT4" stays one token unless the dictionary knows its parts.
"""

from __future__ import annotations

import math
import re
from typing import Iterator, Protocol

_BLOCK = re.compile("([\u4e00-\u9fd5a-zA-Z0-9+#&\\._%\\-]+)")
_SKIP = re.compile("(\r\n|\\s)")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class WordFrequencies(Protocol):
    """What the segmenter reads of a `Dictionary`: its frequency tables. (Typed by this
    protocol, not the class, because the dictionary itself segments with this module to
    suggest frequencies: the import runs one way, dictionary -> max_prob.)"""

    freq: dict[str, int]  # word -> freq > 0, proper prefix -> 0
    logf: dict[str, float]  # word -> log(freq)
    total: int


class MaxProbSegmenter:
    """Reads the dictionary at every call, so words added later take effect at once."""

    def __init__(self, dictionary: WordFrequencies) -> None:
        self.dictionary = dictionary

    def cut(self, text: str) -> Iterator[str]:
        """Yield the words of `text`; their concatenation is `text`."""
        return iter(self.lcut(text))

    def lcut(self, text: str) -> list[str]:
        out: list[str] = []
        # re.split with one group: even indices are the text between blocks, odd ones blocks
        for k, part in enumerate(_BLOCK.split(text)):
            if not part:
                continue
            if k & 1:
                self._cut_block(part, out)
            else:
                for m, piece in enumerate(_SKIP.split(part)):
                    if m & 1:
                        out.append(piece)  # a whitespace token
                    else:
                        out.extend(piece)  # every other character on its own
        return out

    def dag(self, s: str) -> dict[int, list[int]]:
        """The word DAG: dag[i] lists the (inclusive) last positions j of the dictionary words
        s[i:j+1], or just [i] when no word starts at i — jieba's get_DAG. `best_path` walks the
        same edges without building this dict."""
        freq = self.dictionary.freq
        out: dict[int, list[int]] = {}
        n = len(s)
        for i in range(n):
            ends = []
            j = i
            frag = s[i]
            while j < n and frag in freq:
                if freq[frag]:
                    ends.append(j)
                j += 1
                frag = s[i:j + 1]
            out[i] = ends or [i]
        return out

    def best_path(self, s: str) -> list[int]:
        """end[i]: the exclusive end of the word that starts at i on the best path."""
        d = self.dictionary
        freq = d.freq
        logf = d.logf
        lt = math.log(d.total) if d.total > 0 else 0.0
        unseen = 0.0 - lt  # jieba: log(1) - logtotal
        n = len(s)
        score = [0.0] * (n + 1)
        end = list(range(1, n + 2))
        for i in range(n - 1, -1, -1):
            best = None
            j = i + 1
            frag = s[i]
            while frag in freq:
                lf = logf.get(frag)
                if lf is not None:
                    sc = lf - lt + score[j]
                    if best is None or sc >= best:  # >=: ties go to the longer word
                        best = sc
                        end[i] = j
                if j == n:
                    break
                j += 1
                frag = s[i:j]
            score[i] = unseen + score[i + 1] if best is None else best
        return end

    def _cut_block(self, s: str, out: list[str]) -> None:
        end = self.best_path(s)
        n = len(s)
        i = 0
        buf = ""
        while i < n:
            j = end[i]
            if j - i == 1 and s[i] in _ALNUM:
                buf += s[i]
            else:
                if buf:
                    out.append(buf)
                    buf = ""
                out.append(s[i:j])
            i = j
        if buf:
            out.append(buf)

    def cut_block(self, s: str) -> list[str]:
        """Segment one block (no splitting into blocks first)."""
        out: list[str] = []
        self._cut_block(s, out)
        return out
