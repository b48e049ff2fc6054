"""`BackoffLM`: an n-gram model in backoff form — the shape of an ARPA file.

For every stored k-gram g: log10 p(g) and (below the top order) a backoff weight log10 bo(g).
A query p(w | h) uses the longest stored n-gram:

    p(w | h) = p(h w)                       if h w is stored
             = bo(h) * p(w | h minus its first word)   otherwise

with bo(h) = 1 when h itself is not stored (ARPA semantics). Kneser–Ney and Katz models are
estimated into this form (their interpolation/backoff is folded into the stored numbers), so
one scorer serves them, ARPA files read from disk and stupid backoff (whose "backoff
weight" is the constant 0.4, applied even when h is not stored — `default_bo`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from lmkit.ngram.base import NGramLM
from lmkit.ngram.keys import GramTable
from lmkit.ngram.vocab import Vocabulary


class BackoffLM(NGramLM):
    method = "backoff"

    def __init__(self, order: int, vocab: Vocabulary, tables: list[GramTable], log10_probs: list[np.ndarray],
                 log10_backoffs: list[np.ndarray], *, method: str = "backoff", default_bo: float = 0.0,
                 normalized: bool = True, meta: dict | None = None) -> None:
        super().__init__(order, vocab)
        if not (len(tables) == len(log10_probs) == len(log10_backoffs) == order):
            raise ValueError("need one table, prob array and backoff array per order")
        self.tables = tables
        self.logp = [np.asarray(p, dtype=np.float64) for p in log10_probs]
        self.logbo = [np.asarray(b, dtype=np.float64) for b in log10_backoffs]
        self.method = method
        self.default_bo = float(default_bo)
        self.normalized = normalized
        self.meta = dict(meta or {})

    def _log10_positions(self, toks, pos, hist):
        res = np.full(len(pos), np.nan)
        acc = np.zeros(len(pos))
        unresolved = np.ones(len(pos), dtype=bool)
        for k in range(self.order, 0, -1):
            sel = np.flatnonzero(unresolved & (hist >= k - 1))
            if not sel.size:
                continue
            p = pos[sel]
            grams = np.stack([toks[p - k + 1 + j] for j in range(k)], axis=1)
            idx = self.tables[k - 1].find(grams)
            hit = idx >= 0
            res[sel[hit]] = acc[sel[hit]] + self.logp[k - 1][idx[hit]]
            unresolved[sel[hit]] = False
            miss = ~hit
            if k > 1 and miss.any():
                ctx = self.tables[k - 2].find(grams[miss][:, :-1])
                bo = np.where(ctx >= 0, self.logbo[k - 2][np.maximum(ctx, 0)], self.default_bo)
                acc[sel[miss]] += bo
        if unresolved.any():  # a word missing from the unigrams (an ARPA file without it)
            res[unresolved] = acc[unresolved] + self._unk_log10()
        return res

    def _unk_log10(self) -> float:
        idx = self.tables[0].find(np.array([[0]]))[0]
        return float(self.logp[0][idx]) if idx >= 0 else -100.0

    def next_log10(self, context: Sequence[int]) -> np.ndarray:
        ctx = [int(c) for c in context][-(self.order - 1):] if self.order > 1 else []
        dist = np.full(len(self.vocab), self._unk_log10())
        dist[self.tables[0].grams[:, 0]] = self.logp[0]
        for k in range(2, len(ctx) + 2):
            h = np.array(ctx[len(ctx) - (k - 1):], dtype=np.int64)
            ci = self.tables[k - 2].find(h[None, :])[0]
            dist = dist + (self.logbo[k - 2][ci] if ci >= 0 else self.default_bo)
            lo, hi = self.tables[k - 1].prefix_range(h)
            if hi > lo:
                dist[self.tables[k - 1].grams[lo:hi, -1]] = self.logp[k - 1][lo:hi]
        return dist

    def num_ngrams(self) -> list[int]:
        return [len(t) for t in self.tables]


def log10_safe(x: np.ndarray, floor: float = -99.0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(x)
    return np.where(x > 0, out, floor)


def full_unigrams(counts, vocab_size: int) -> tuple[GramTable, np.ndarray]:
    """The order-1 table over the whole vocabulary (unseen words get count 0)."""
    t = counts.table(1)
    c = np.zeros(vocab_size, dtype=np.int64)
    c[t.grams[:, 0]] = counts.count(1)
    return GramTable(np.arange(vocab_size, dtype=np.int32)[:, None], vocab_size), c


LOG10_04 = math.log10(0.4)
