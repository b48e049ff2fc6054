"""`train_ngram`: sentences of words -> vocabulary -> counts -> a smoothed model.

Methods: "addk" (add_k.py; k=1 is Laplace), "kn" (kneser_ney.py), "katz" (katz.py),
"stupid" (stupid_backoff.py). Words seen fewer than `min_count` times become <unk>, which
then has training counts of its own (the usual open-vocabulary recipe).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from lmkit.ngram.base import NGramLM, as_words
from lmkit.ngram.counts import NGramCounts, count_ngrams
from lmkit.ngram.vocab import Vocabulary

METHODS = ("addk", "kn", "katz", "stupid")


def estimate(counts: NGramCounts, vocab: Vocabulary, method: str, **params) -> NGramLM:
    if method == "kn":
        from lmkit.ngram.kneser_ney import kneser_ney

        return kneser_ney(counts, vocab, **params)
    if method == "katz":
        from lmkit.ngram.katz import katz

        return katz(counts, vocab, **params)
    if method == "stupid":
        from lmkit.ngram.stupid_backoff import stupid_backoff

        return stupid_backoff(counts, vocab, **params)
    if method in ("addk", "laplace"):
        from lmkit.ngram.add_k import AddKLM

        return AddKLM(counts, vocab, **({"k": 1.0} | params))
    raise ValueError(f"unknown smoothing method {method!r}; use one of {METHODS}")


def train_ngram(sentences: Iterable[str | Sequence[str]], order: int = 3, method: str = "kn", *,
                vocab: Vocabulary | None = None, min_count: int = 1, max_vocab: int | None = None,
                return_counts: bool = False, **params):
    """Train an n-gram model on sentences (strings are split on whitespace)."""
    if not isinstance(order, int) or isinstance(order, bool) or order < 1:
        raise ValueError(f"n-gram order must be an integer >= 1, got {order!r}")
    if method not in METHODS and method != "laplace":
        raise ValueError(f"unknown smoothing method {method!r}; use one of {METHODS}")
    sents = [as_words(s) for s in sentences]
    if not sents or not any(sents):
        raise ValueError("cannot train an n-gram model on an empty corpus (no words found)")
    if vocab is None:
        vocab = Vocabulary.build(sents, min_count=min_count, max_size=max_vocab)
    counts = count_ngrams((vocab.encode(s) for s in sents), order, len(vocab))
    model = estimate(counts, vocab, method, **params)
    return (model, counts) if return_counts else model
