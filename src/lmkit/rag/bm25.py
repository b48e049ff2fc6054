"""BM25 (Okapi): lexical ranking with term-frequency saturation and length normalisation.

    score(q, d) = sum over query tokens t of  idf(t) * tf(t,d) * (k1 + 1)
                                              / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln((N - df(t) + 0.5) / (df(t) + 0.5))

k1 = 1.5 (how fast repeated terms saturate), b = 0.75 (how strongly long documents are
penalised). A term in more than half the documents would get a negative idf; as in
`rank_bm25.BM25Okapi` (our test oracle) it gets ``epsilon * mean idf`` instead (epsilon 0.25).
A repeated query token counts each time. Scores are computed from an inverted index, so
only documents that share a token are touched. Documents can be added and removed; the
statistics (N, avgdl, df) are recomputed lazily. Tokens come from `LexicalTokenizer`
(Chinese segmentation plus, by default, Chinese character bigrams; lower-cased English), or
any callable. The bigram setting is saved with the index so queries are tokenized the way
the documents were.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Callable, Sequence


class BM25:
    def __init__(self, tokenizer: Callable[[str], list[str]] | None = None, k1: float = 1.5, b: float = 0.75,
                 epsilon: float = 0.25, cjk_bigrams: bool = True) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if tokenizer is None:
            from lmkit.rag.lexical import shared_tokenizer

            tokenizer = shared_tokenizer(cjk_bigrams)
        self.cjk_bigrams = cjk_bigrams
        self.tokenizer = tokenizer
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.ids: list[str] = []
        self.tf: list[Counter] = []
        self._pos: dict[str, int] = {}
        self._stale = True

    def add(self, ids: Sequence[str], texts: Sequence[str] | None = None, tokens: Sequence[list[str]] | None = None) -> None:
        if tokens is None:
            tokens = [self.tokenizer(t) for t in texts or []]
        for i, toks in zip(ids, tokens):
            i = str(i)
            if i in self._pos:
                self.tf[self._pos[i]] = Counter(toks)
            else:
                self._pos[i] = len(self.ids)
                self.ids.append(i)
                self.tf.append(Counter(toks))
        self._stale = True

    def delete(self, ids: Sequence[str]) -> None:
        gone = {str(i) for i in ids} & self._pos.keys()
        if not gone:
            return
        keep = [k for k, i in enumerate(self.ids) if i not in gone]
        self.ids = [self.ids[k] for k in keep]
        self.tf = [self.tf[k] for k in keep]
        self._pos = {i: k for k, i in enumerate(self.ids)}
        self._stale = True

    def _refresh(self) -> None:
        n = len(self.ids)
        self.doc_len = [sum(c.values()) for c in self.tf]
        self.avgdl = (sum(self.doc_len) / n) if n else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for d, c in enumerate(self.tf):
            for t, f in c.items():
                self.postings.setdefault(t, []).append((d, f))
        self.idf: dict[str, float] = {}
        negative = []
        for t, plist in self.postings.items():
            df = len(plist)
            idf = math.log(n - df + 0.5) - math.log(df + 0.5)
            self.idf[t] = idf
            if idf < 0:
                negative.append(t)
        avg_idf = (sum(self.idf.values()) / len(self.idf)) if self.idf else 0.0
        for t in negative:
            self.idf[t] = self.epsilon * avg_idf
        self._stale = False

    def scores(self, query: str | list[str]) -> list[float]:
        """BM25 score of every document (in insertion order) for the query."""
        if self._stale:
            self._refresh()
        toks = self.tokenizer(query) if isinstance(query, str) else list(query)
        out = [0.0] * len(self.ids)
        k1, b, avgdl = self.k1, self.b, self.avgdl or 1.0
        for t in toks:
            idf = self.idf.get(t)
            if not idf:
                continue
            for d, f in self.postings[t]:
                out[d] += idf * (f * (k1 + 1) / (f + k1 * (1 - b + b * self.doc_len[d] / avgdl)))
        return out

    def search(self, query: str | list[str], k: int = 10) -> list[tuple[str, float]]:
        """The k best (id, score) with score > 0, best first; ties by insertion order."""
        s = self.scores(query)
        top = sorted((i for i in range(len(s)) if s[i] > 0), key=lambda i: (-s[i], i))[:k]
        return [(self.ids[i], s[i]) for i in top]

    def to_dict(self) -> dict:
        return {"k1": self.k1, "b": self.b, "epsilon": self.epsilon, "cjk_bigrams": self.cjk_bigrams, "ids": self.ids,
                "tf": [dict(c) for c in self.tf]}

    @classmethod
    def from_dict(cls, d: dict, tokenizer=None) -> "BM25":
        bm = cls(tokenizer, d["k1"], d["b"], d["epsilon"], bool(d.get("cjk_bigrams", False)))
        bm.add(d["ids"], tokens=[list(Counter(c).elements()) for c in d["tf"]])
        return bm

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
