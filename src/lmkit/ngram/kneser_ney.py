"""Interpolated modified Kneser–Ney (Chen & Goodman 1998), estimated the way KenLM's lmplz does.

1. Adjusted counts a(.): the top order uses raw counts; a lower-order k-gram uses its
   continuation count N1+(• w) = the number of distinct words seen before it — "in how
   many contexts does this appear?" — except k-grams starting with <s>, which cannot be
   extended to the left and keep their raw count.
2. Discounts per order from the count-of-counts t_j of adjusted counts (j = 1..4):
   Y = t1 / (t1 + 2 t2),  D_j = j - (j + 1) Y t_{j+1} / t_j  for j = 1, 2, 3+ .
   If a t_j is 0 or a D_j falls outside [0, j] (tiny corpora), we fall back to
   D = (0.5, 1.0, 1.5) and record it, like lmplz --discount_fallback.
3. For a context h with extensions: u(w|h) = (a(hw) - D(a(hw))) / sum_x a(hx),
   gamma(h) = (D1 N1(h•) + D2 N2(h•) + D3 N3+(h•)) / sum_x a(hx),
   p(w|h) = u(w|h) + gamma(h) p(w|h') (h' = h without its first word); at the unigram level
   p(w) = u(w) + gamma(ε) / |V|, uniform over the vocabulary without <s> (so <unk> gets
   gamma(ε)/|V|). The stored ARPA numbers are p(hw) and backoff gamma(h).

Each order is computed with vectorised numpy over sorted n-gram arrays (keys.py).
"""

from __future__ import annotations

import warnings

import numpy as np

from lmkit.ngram.backoff import BackoffLM, full_unigrams, log10_safe
from lmkit.ngram.counts import NGramCounts
from lmkit.ngram.vocab import BOS_ID, Vocabulary

FALLBACK = (0.5, 1.0, 1.5)


def kn_discounts(adjusted: np.ndarray) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from adjusted counts; second value True when the fallback was used."""
    t = [int(np.sum(adjusted == j)) for j in (1, 2, 3, 4)]
    if min(t) > 0:
        y = t[0] / (t[0] + 2 * t[1])
        d = tuple(j - (j + 1) * y * t[j] / t[j - 1] for j in (1, 2, 3))
        if all(0.0 <= d[j - 1] <= j for j in (1, 2, 3)):
            return d, False  # type: ignore[return-value]
    return FALLBACK, True


def _discount(a: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    table = np.array([0.0, d[0], d[1], d[2]])
    return table[np.minimum(a, 3)]


def adjusted_counts(counts: NGramCounts, vocab_size: int):
    n = counts.order
    tables = list(counts.tables)
    raw = list(counts.counts)
    tables[0], raw[0] = full_unigrams(counts, vocab_size)
    adj = [None] * n
    adj[n - 1] = raw[n - 1].astype(np.int64)
    for k in range(n - 1, 0, -1):
        idx = tables[k - 1].find(tables[k].grams[:, 1:])
        cont = np.bincount(idx, minlength=len(tables[k - 1])).astype(np.int64)
        adj[k - 1] = np.where(tables[k - 1].grams[:, 0] == BOS_ID, raw[k - 1], cont)
    return tables, adj


def kneser_ney(counts: NGramCounts, vocab: Vocabulary, discounts=None) -> BackoffLM:
    """Estimate interpolated modified Kneser–Ney. `discounts`: per-order (D1, D2, D3+) to force."""
    n, V = counts.order, len(vocab)
    tables, adj = adjusted_counts(counts, V)
    probs, bos, used = [], [], []
    fallback_orders = []
    for k in range(1, n + 1):
        a = adj[k - 1]
        ref = a[tables[0].grams[:, 0] != BOS_ID] if k == 1 else a
        if discounts is not None:
            d, fb = tuple(discounts[k - 1]), False
        else:
            d, fb = kn_discounts(ref)
        if fb:
            fallback_orders.append(k)
        used.append(d)
        disc = _discount(a, d)
        if k == 1:
            mask = tables[0].grams[:, 0] != BOS_ID
            denom = float(a[mask].sum())
            if denom <= 0:
                raise ValueError("cannot estimate Kneser-Ney: the corpus has no words")
            gamma0 = float(disc[mask].sum()) / denom
            p = (a - disc) / denom + gamma0 / int(mask.sum())
            p[~mask] = 0.0
            probs.append(p)
        else:
            t = tables[k - 1]
            starts, group = t.context_groups()
            denom = np.add.reduceat(a.astype(np.float64), starts)
            gamma = np.add.reduceat(disc, starts) / denom
            lower = probs[k - 2][tables[k - 2].find(t.grams[:, 1:])]
            probs.append((a - disc) / denom[group] + gamma[group] * lower)
            ctx = tables[k - 2].find(t.grams[starts, :-1])
            bos[k - 2][ctx] = log10_safe(gamma)
        bos.append(np.zeros(len(tables[k - 1])))
    if fallback_orders:
        warnings.warn(f"Kneser-Ney: too few n-grams to estimate discounts for order(s) {fallback_orders}; "
                      f"using the fallback D = {FALLBACK} (as lmplz --discount_fallback)", stacklevel=2)
    logp = [log10_safe(p) for p in probs]
    return BackoffLM(n, vocab, tables, logp, bos, method="kn",
                     meta={"discounts": [list(map(float, d)) for d in used], "discount_fallback": fallback_orders})
