"""Stupid backoff (Brants et al. 2007): fast, web-scale, and NOT a probability model.

    S(w | h) = c(h w) / c(h)          if c(h w) > 0
             = alpha * S(w | h')      otherwise (alpha = 0.4, whether or not h was seen)
    S(w)     = (c(w) + 1) / (N + |V|)  (add-one at the unigram level so <unk> scores > 0;
                                        Brants et al. use c(w)/N)

The scores do not sum to one over w, so a "perplexity" from them is not comparable with the
other models' (`PerplexityResult.normalized` is False); `next_distribution` renormalises
them for sampling. There is no ARPA export (ARPA files must hold probabilities).
"""

from __future__ import annotations

import math

import numpy as np

from lmkit.ngram.backoff import BackoffLM, full_unigrams, log10_safe
from lmkit.ngram.counts import NGramCounts
from lmkit.ngram.vocab import BOS_ID, Vocabulary


def stupid_backoff(counts: NGramCounts, vocab: Vocabulary, alpha: float = 0.4) -> BackoffLM:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"stupid backoff alpha must be in (0, 1], got {alpha}")
    n, V = counts.order, len(vocab)
    tables = list(counts.tables)
    raw = list(counts.counts)
    tables[0], raw[0] = full_unigrams(counts, V)
    mask = tables[0].grams[:, 0] != BOS_ID
    total = float(raw[0][mask].sum())
    s1 = (raw[0] + 1.0) / (total + int(mask.sum()))
    s1[~mask] = 0.0
    logp = [log10_safe(s1)]
    for k in range(2, n + 1):
        t = tables[k - 1]
        starts, group = t.context_groups()
        ch = np.add.reduceat(raw[k - 1].astype(np.float64), starts)
        logp.append(np.log10(raw[k - 1] / ch[group]))
    a = math.log10(alpha)
    bos = [np.full(len(t), a) for t in tables]
    return BackoffLM(n, vocab, tables, logp, bos, method="stupid", default_bo=a, normalized=False,
                     meta={"alpha": alpha})
