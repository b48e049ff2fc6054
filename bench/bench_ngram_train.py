"""n-gram training: lmkit (numpy keys, modified Kneser-Ney) vs NLTK `lm.KneserNeyInterpolated`.

Same input for both: the first LINES non-empty lines of bench/corpus/en.txt, split on
whitespace, order 3. NLTK's fit only counts (it computes KN probabilities lazily at query
time); lmkit's time includes counting AND estimating every probability and backoff weight,
i.e. a model ready to write as ARPA. Peak memory is measured with tracemalloc (numpy
allocations are traced). Also reported: the KN perplexity of both on a few held-out lines
(NLTK's scoring is slow: it scans all n-grams per query) — they differ by design, see
docs/parts/ngram-eval-benchmarks.md. Last line: ours/peer training time.

Run: OMP_NUM_THREADS=1 flock /tmp/lmkit-bench.lock python3 bench/bench_ngram_train.py [LINES]
"""

from __future__ import annotations

import gc
import math
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(fn):
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def main() -> None:
    n_lines = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    order = 3
    from lmkit.corpus import write_corpora

    lines = [ln.split() for ln in (write_corpora(ROOT / "bench" / "corpus") / "en.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    train, test = lines[:n_lines], lines[n_lines:n_lines + 20]
    n_tok = sum(map(len, train))

    from lmkit.ngram import train_ngram

    ours, t_ours, m_ours = measure(lambda: train_ngram(train, order, "kn"))

    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    def nltk_fit():
        data, vocab = padded_everygram_pipeline(order, train)
        lm = KneserNeyInterpolated(order)
        lm.fit(data, vocab)
        return lm

    ref, t_ref, m_ref = measure(nltk_fit)

    import nltk
    import numpy as np

    print(f"corpus: {len(train)} lines, {n_tok} tokens of en.txt; order {order}; "
          f"lmkit n-grams {ours.num_ngrams()}; numpy {np.__version__}, nltk {nltk.__version__}")
    print(f"lmkit  train (count + KN estimate): {t_ours:8.3f} s   peak traced memory {m_ours / 2**20:8.1f} MiB")
    print(f"nltk   fit   (count only)         : {t_ref:8.3f} s   peak traced memory {m_ref / 2**20:8.1f} MiB")
    t0 = time.perf_counter()
    r_ours = ours.evaluate(test)
    t_sc_ours = time.perf_counter() - t0
    from nltk.lm.preprocessing import pad_both_ends
    from nltk.util import ngrams

    t0 = time.perf_counter()
    total, n, total_iv, n_iv = 0.0, 0, 0.0, 0
    for s in test:
        for g in ngrams(pad_both_ends(s, n=order), order):
            lp = ref.logscore(g[-1], g[:-1])
            total += lp
            n += 1
            if g[-1] in ref.vocab:  # NLTK gives out-of-vocabulary words probability 0
                total_iv += lp
                n_iv += 1
    t_sc_ref = time.perf_counter() - t0
    ppl_ref = 2 ** (-total / n) if math.isfinite(total) else float("inf")
    print(f"held-out ({len(test)} lines, {r_ours.n_oov} OOV) KN perplexity: lmkit {r_ours.perplexity:.2f} "
          f"(without OOV {r_ours.perplexity_excluding_oov:.2f}; {t_sc_ours:.3f} s), nltk {ppl_ref:.2f} "
          f"(without OOV {2 ** (-total_iv / n_iv):.2f}; {t_sc_ref:.2f} s)")
    print(f"memory ours/peer: {m_ours / m_ref:.3f}")
    print(f"time ours/peer: {t_ours / t_ref:.3f}")


if __name__ == "__main__":
    main()
