"""Add-k (Lidstone) smoothing; k = 1 is Laplace (add-one).

    p(w | h) = (c(h w) + k) / (c(h) + k |V|)

with h the last min(n-1, position) tokens (the first word of a sentence is predicted from
<s> alone), c(h) = sum_x c(h x), and |V| the vocabulary without <s> (it is never predicted;
<unk> and </s> are in). An unseen context gives the uniform 1/|V|. There is no backoff, so
add-k has no ARPA form; it is the textbook answer to 数据稀疏 (data sparsity) and a weak one:
it moves far too much mass to unseen n-grams when |V| is large.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmkit.ngram.backoff import full_unigrams
from lmkit.ngram.base import NGramLM
from lmkit.ngram.counts import NGramCounts
from lmkit.ngram.keys import GramTable
from lmkit.ngram.vocab import BOS_ID, Vocabulary


class AddKLM(NGramLM):
    method = "addk"

    def __init__(self, counts: NGramCounts, vocab: Vocabulary, k: float = 1.0) -> None:
        super().__init__(counts.order, vocab)
        if not k > 0:
            raise ValueError(f"add-k needs k > 0, got {k}")
        self.k = float(k)
        self.counts = counts
        V = len(vocab)
        self.tables = list(counts.tables)
        self.raw = [c.astype(np.float64) for c in counts.counts]
        self.tables[0], u = full_unigrams(counts, V)
        self.raw[0] = u.astype(np.float64)
        self.n_types = V - 1  # without <s>
        self.n_words = float(self.raw[0].sum() - self.raw[0][BOS_ID])
        # context totals for orders >= 2: (k-1)-gram -> sum of counts of its extensions
        self.ctx: list[tuple[GramTable, np.ndarray] | None] = [None]
        for t, c in zip(self.tables[1:], self.raw[1:]):
            starts, _ = t.context_groups()
            self.ctx.append((GramTable(t.grams[starts, :-1], V), np.add.reduceat(c, starts)))
        self.meta = {"k": self.k}

    def _log10_positions(self, toks, pos, hist):
        out = np.empty(len(pos))
        for h in np.unique(hist):
            sel = np.flatnonzero(hist == h)
            order = int(h) + 1
            p = pos[sel]
            grams = np.stack([toks[p - order + 1 + j] for j in range(order)], axis=1)
            idx = self.tables[order - 1].find(grams)
            c = np.where(idx >= 0, self.raw[order - 1][np.maximum(idx, 0)], 0.0)
            if order == 1:
                denom = np.full(len(sel), self.n_words)
            else:
                t, tot = self.ctx[order - 1]
                ci = t.find(grams[:, :-1])
                denom = np.where(ci >= 0, tot[np.maximum(ci, 0)], 0.0)
            out[sel] = np.log10((c + self.k) / (denom + self.k * self.n_types))
        return out

    def next_log10(self, context: Sequence[int]) -> np.ndarray:
        ctx = [int(c) for c in context][-(self.order - 1):] if self.order > 1 else []
        order = len(ctx) + 1
        V = len(self.vocab)
        c = np.zeros(V)
        if order == 1:
            c[:] = self.raw[0]
            denom = self.n_words
        else:
            t = self.tables[order - 1]
            lo, hi = t.prefix_range(np.array(ctx))
            c[t.grams[lo:hi, -1]] = self.raw[order - 1][lo:hi]
            ct, tot = self.ctx[order - 1]
            ci = ct.find(np.array([ctx]))[0]
            denom = tot[ci] if ci >= 0 else 0.0
        out = np.log10((c + self.k) / (denom + self.k * self.n_types))
        out[BOS_ID] = -np.inf
        return out
