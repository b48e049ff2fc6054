"""Count all 1..n-grams of a corpus of id sentences, in bounded memory.

Sentences are padded ``<s> w1 ... wm </s>`` (see vocab.py) and streamed in chunks of about
`chunk_tokens` ids. For each chunk and order k the windows that stay inside one sentence
are encoded as numpy keys (keys.py) and reduced with ``np.unique(return_counts=True)``;
chunk results are merged the same way. Peak memory is about a chunk's windows plus the
distinct n-grams — never a Python object per n-gram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from lmkit.ngram.keys import GramCodec, GramTable
from lmkit.ngram.vocab import BOS_ID, EOS_ID


@dataclass
class NGramCounts:
    """tables[k-1]: the distinct k-grams (sorted), counts[k-1]: how often each occurs."""

    order: int
    vocab_size: int
    tables: list[GramTable]
    counts: list[np.ndarray]
    n_sentences: int
    n_tokens: int  # words, without <s> / </s>

    def table(self, k: int) -> GramTable:
        return self.tables[k - 1]

    def count(self, k: int) -> np.ndarray:
        return self.counts[k - 1]


def _merge(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) == 1:
        return keys[0], counts[0]
    k = np.concatenate(keys)
    c = np.concatenate(counts)
    uniq, inv = np.unique(k, return_inverse=True)
    total = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(total, inv.ravel(), c)
    return uniq, total


def _padded(chunk: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(s) + 2 for s in chunk], dtype=np.int64)
    toks = np.empty(int(lens.sum()), dtype=np.int32)
    sid = np.repeat(np.arange(len(chunk), dtype=np.int64), lens)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    toks[starts] = BOS_ID
    toks[starts + lens - 1] = EOS_ID
    body = np.ones(len(toks), dtype=bool)
    body[starts] = False
    body[starts + lens - 1] = False
    if body.any():
        toks[body] = np.concatenate([np.asarray(s, dtype=np.int32) for s in chunk if len(s)])
    return toks, sid


def count_ngrams(sentences: Iterable[Sequence[int]], order: int, vocab_size: int,
                 chunk_tokens: int = 1 << 21) -> NGramCounts:
    """Counts of every k-gram, k = 1..order, over padded sentences of ids < vocab_size."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"n-gram order must be an integer >= 1, got {order!r}")
    codecs = [GramCodec(vocab_size, k) for k in range(1, order + 1)]
    parts: list[tuple[list, list]] = [([], []) for _ in range(order)]
    chunk: list[np.ndarray] = []
    size = 0
    n_sent = n_tok = 0

    def flush() -> None:
        toks, sid = _padded(chunk)
        n = len(toks)
        for k in range(1, order + 1):
            if n < k:
                continue
            m = n - k + 1
            valid = sid[:m] == sid[k - 1:]
            cols = [toks[j:j + m][valid] for j in range(k)]
            if not len(cols[0]):
                continue
            keys, cnt = np.unique(codecs[k - 1].encode_columns(cols), return_counts=True)
            pk, pc = parts[k - 1]
            pk.append(keys)
            pc.append(cnt.astype(np.int64))
            if len(pk) >= 8:
                mk, mc = _merge(pk, pc)
                parts[k - 1] = ([mk], [mc])

    for s in sentences:
        arr = np.asarray(s, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise ValueError(f"token id out of range [0, {vocab_size}) in sentence {n_sent}")
        chunk.append(arr.astype(np.int32))
        n_sent += 1
        n_tok += len(arr)
        size += len(arr) + 2
        if size >= chunk_tokens:
            flush()
            chunk, size = [], 0
    if chunk:
        flush()
    if n_sent == 0:
        raise ValueError("cannot count n-grams of an empty corpus: no sentences were given")
    tables, counts = [], []
    for k in range(1, order + 1):
        pk, pc = parts[k - 1]
        if pk:
            keys, cnt = _merge(pk, pc)
        else:
            keys = codecs[k - 1].encode(np.zeros((0, k), dtype=np.int32))
            cnt = np.zeros(0, dtype=np.int64)
        tables.append(GramTable(codecs[k - 1].decode(keys), vocab_size, keys=keys))
        counts.append(cnt)
    return NGramCounts(order, vocab_size, tables, counts, n_sent, n_tok)
