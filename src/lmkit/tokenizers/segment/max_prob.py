"""Maximum-probability segmentation: the most likely path through the word DAG.

Every dictionary word found in the sentence is an edge of a DAG over character positions;
with a unigram model P(w) = freq(w) / total, the best segmentation maximises
sum(log P(w)), found by dynamic programming from the end of the sentence:

    best[i] = max over words s[i:j+1] of  log P(s[i:j+1]) + best[j+1]

Ties go to the longer word. A character that starts no word gets log(1/total), the
probability of a word seen once. This is jieba's algorithm with its HMM off, reproduced
exactly — including how it treats text around the Chinese: runs of letters, digits and
``+#&._%-`` are segmented together with the Chinese, whitespace is kept as tokens, other
symbols become single tokens, and consecutive single ASCII letters/digits on the best
path are glued back into one token.
"""

from __future__ import annotations

import math
import re
from typing import Iterator

from lmkit.tokenizers.segment.dictionary import Dictionary

_BLOCK = re.compile("([\u4e00-\u9fd5a-zA-Z0-9+#&\\._%\\-]+)")
_SKIP = re.compile("(\r\n|\\s)")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class MaxProbSegmenter:
    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary

    def cut(self, text: str) -> Iterator[str]:
        """Yield the words of `text`; their concatenation is `text`."""
        for block in _BLOCK.split(text):
            if not block:
                continue
            if _BLOCK.match(block):
                yield from self.cut_block(block)
            else:
                for piece in _SKIP.split(block):
                    if not piece:
                        continue
                    if _SKIP.match(piece):
                        yield piece
                    else:
                        yield from piece

    def lcut(self, text: str) -> list[str]:
        return list(self.cut(text))

    def best_path(self, s: str) -> list[int]:
        """end[i]: the exclusive end of the word starting at i on the best path."""
        freq = self.dictionary.freq
        logp = self.dictionary.logp
        unseen = -math.log(self.dictionary.total)
        n = len(s)
        score = [0.0] * (n + 1)
        end = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            best = -math.inf
            best_j = i + 1
            j = i + 1
            frag = s[i]
            while frag in freq:
                lp = logp.get(frag)
                if lp is not None:
                    sc = lp + score[j]
                    if sc >= best:
                        best, best_j = sc, j
                if j >= n:
                    break
                j += 1
                frag = s[i:j]
            if best == -math.inf:  # no word starts here: a one-character word seen once
                best = unseen + score[i + 1]
            score[i], end[i] = best, best_j
        return end

    def cut_block(self, s: str) -> Iterator[str]:
        end = self.best_path(s)
        n = len(s)
        i = 0
        buf = ""
        while i < n:
            j = end[i]
            word = s[i:j]
            if j - i == 1 and word in _ALNUM:
                buf += word
            else:
                if buf:
                    yield buf
                    buf = ""
                yield word
            i = j
        if buf:
            yield buf
