"""Katz backoff with Good–Turing discounts (Katz 1987; as in SRILM's default ngram-count).

Good–Turing re-estimates a count r as r* = (r + 1) n_{r+1} / n_r (n_r: how many n-grams of
this order occur exactly r times). Katz discounts only small counts (r <= K = 5):

    d_r = (r*/r - (K+1) n_{K+1} / n_1) / (1 - (K+1) n_{K+1} / n_1),   d_r = 1 for r > K

p*(w|h) = d_r r / c(h) for seen h w; the freed mass beta(h) = 1 - sum_w p*(w|h) goes to unseen
words in proportion to the lower-order model, normalised over the unseen ones:
alpha(h) = beta(h) / (1 - sum_{w seen after h} p_katz(w|h')). Where Good–Turing is undefined
(some n_r = 0, or d_r outside (0, 1) — small corpora), we use d_r = (r - 0.5) / r (absolute
discount 0.5) for that r and record it. At the unigram level the freed mass is spread
uniformly over the vocabulary (without <s>), which gives <unk> a probability; if no unigram
count is <= K (Good–Turing frees nothing) the unigrams use absolute discounting 0.5 instead.
A context whose continuations were all seen more than K times would likewise free no mass
(unseen words would get probability 0 and perplexity explodes): its counts are discounted
absolutely by 0.5. If every vocabulary word has been seen after h (no unseen mass below), p*(.|h) is
renormalised to sum to one and bo(h) = 0 (log10 -99).
"""

from __future__ import annotations

import numpy as np

from lmkit.ngram.backoff import BackoffLM, full_unigrams, log10_safe
from lmkit.ngram.counts import NGramCounts
from lmkit.ngram.vocab import BOS_ID, Vocabulary


def good_turing_discounts(counts: np.ndarray, k_max: int = 5) -> tuple[np.ndarray, list[int]]:
    """d[r] for r = 0..k_max (d[0] unused) and the r's that needed the fallback."""
    n = np.array([int(np.sum(counts == r)) for r in range(0, k_max + 2)], dtype=np.float64)
    d = np.ones(k_max + 1)
    bad = []
    common = (k_max + 1) * n[k_max + 1] / n[1] if n[1] > 0 else np.nan
    for r in range(1, k_max + 1):
        ok = n[r] > 0 and n[1] > 0 and common < 1
        if ok:
            val = ((r + 1) * n[r + 1] / (r * n[r]) - common) / (1 - common)
            ok = 0.0 < val < 1.0
        if ok:
            d[r] = val
        else:
            d[r] = (r - 0.5) / r
            bad.append(r)
    return d, bad


def _apply(d: np.ndarray, c: np.ndarray) -> np.ndarray:
    out = np.ones(len(c))
    small = (c >= 1) & (c < len(d))
    out[small] = d[c[small]]
    return out


def katz(counts: NGramCounts, vocab: Vocabulary, k_max: int = 5) -> BackoffLM:
    n, V = counts.order, len(vocab)
    tables = list(counts.tables)
    raw = [c.astype(np.int64) for c in counts.counts]
    tables[0], raw[0] = full_unigrams(counts, V)
    probs, bos, meta = [], [], {"discounts": [], "fallback_r": []}
    for k in range(1, n + 1):
        c = raw[k - 1]
        mask = tables[0].grams[:, 0] != BOS_ID if k == 1 else np.ones(len(c), dtype=bool)
        d, bad = good_turing_discounts(c[mask], k_max)
        meta["discounts"].append([float(x) for x in d[1:]])
        meta["fallback_r"].append(bad)
        dc = _apply(d, c) * c
        if k == 1:
            total = float(c[mask].sum())
            if total <= 0:
                raise ValueError("cannot estimate Katz backoff: the corpus has no words")
            pstar = dc / total
            beta = 1.0 - float(pstar[mask].sum())
            if beta <= 1e-12:  # no count <= K: Good-Turing frees nothing; keep mass for <unk>
                pstar = np.where(c > 0, c - 0.5, 0.0) / total
                beta = 1.0 - float(pstar[mask].sum())
                meta["unigram_absolute_discount"] = 0.5
            p = pstar + beta / int(mask.sum())
            p[~mask] = 0.0
            probs.append(p)
        else:
            t = tables[k - 1]
            starts, group = t.context_groups()
            ch = np.add.reduceat(c.astype(np.float64), starts)
            pstar = dc / ch[group]
            beta = 1.0 - np.add.reduceat(pstar, starts)
            # every continuation of h seen more than K times: Good-Turing frees nothing and unseen
            # words would get probability 0; discount those contexts absolutely by 0.5 instead
            stuck = beta <= 1e-12
            if stuck.any():
                rows = stuck[group]
                pstar[rows] = (c[rows] - 0.5) / ch[group][rows]
                beta = 1.0 - np.add.reduceat(pstar, starts)
                meta.setdefault("absolute_discount_contexts", []).append(int(stuck.sum()))
            lower = probs[k - 2][tables[k - 2].find(t.grams[:, 1:])]
            denom = 1.0 - np.add.reduceat(lower, starts)
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha = np.where((denom > 1e-12) & (beta > 1e-15), beta / denom, 0.0)
            # every vocabulary word was seen after h: nothing to back off to, renormalise p*
            full = (denom <= 1e-12) & (beta > 1e-15)
            if full.any():
                pstar = pstar / np.where(full, 1.0 - beta, 1.0)[group]
            probs.append(pstar)
            ctx = tables[k - 2].find(t.grams[starts, :-1])
            bos[k - 2][ctx] = log10_safe(alpha)
        bos.append(np.zeros(len(tables[k - 1])))
    return BackoffLM(n, vocab, tables, [log10_safe(p) for p in probs], bos, method="katz", meta=meta)
