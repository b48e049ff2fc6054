"""A small trained text classifier: character n-gram multinomial naive Bayes.

Character n-grams (1..4, over the normalised text with word edges marked) need no
tokenizer and work the same for English and Chinese, where a 2-gram is often a word. The
classes are the moderation categories plus "safe"; with Laplace smoothing alpha,

    log P(c | x) = log P(c) + sum_g count(g, x) * log((n(g, c) + alpha) / (n(c) + alpha * |G|)) + const,

normalised with a softmax, so `predict_proba` gives one probability per class. Training is
a single counting pass (milliseconds for the few hundred examples shipped in
`moderation_train.jsonl`), so the model is trained when first needed rather than stored.
Naive Bayes is overconfident: its probabilities rank well but are not calibrated, which is
why the moderation threshold is a setting.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from lmkit.data.safety.rules import normalize

SAFE = "safe"
TRAIN_FILE = Path(__file__).with_name("moderation_train.jsonl")


def char_ngrams(text: str, n_min: int = 1, n_max: int = 4) -> Counter:
    """Counts of the character n-grams of the normalised text, words padded with spaces."""
    s = " " + " ".join(normalize(text).split()) + " "
    grams: Counter = Counter()
    for n in range(n_min, n_max + 1):
        grams.update(s[i:i + n] for i in range(len(s) - n + 1))
    return grams


class NgramNaiveBayes:
    """Multinomial naive Bayes over character n-grams; `fit(texts, labels)`, `predict_proba(text)`."""

    def __init__(self, alpha: float = 0.5, n_max: int = 4) -> None:
        self.alpha, self.n_max = float(alpha), int(n_max)
        self.classes: list[str] = []
        self.log_prior: dict[str, float] = {}
        self.log_like: dict[str, dict[str, float]] = {}
        self.log_unseen: dict[str, float] = {}

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> "NgramNaiveBayes":
        if len(texts) != len(labels) or not texts:
            raise ValueError("fit needs as many labels as texts, and at least one")
        counts: dict[str, Counter] = {}
        docs = Counter(labels)
        for text, label in zip(texts, labels):
            counts.setdefault(label, Counter()).update(char_ngrams(text, 1, self.n_max))
        vocab = set().union(*counts.values())
        self.classes = sorted(counts)
        total_docs = sum(docs.values())
        for c in self.classes:
            denom = sum(counts[c].values()) + self.alpha * (len(vocab) + 1)
            self.log_prior[c] = math.log(docs[c] / total_docs)
            self.log_like[c] = {g: math.log((k + self.alpha) / denom) for g, k in counts[c].items()}
            self.log_unseen[c] = math.log(self.alpha / denom)
        self._vocab = vocab
        return self

    def predict_proba(self, text: str) -> dict[str, float]:
        """P(class | text) for every class."""
        grams = {g: k for g, k in char_ngrams(text, 1, self.n_max).items() if g in self._vocab}
        logits = {c: self.log_prior[c] + sum(k * self.log_like[c].get(g, self.log_unseen[c]) for g, k in grams.items())
                  for c in self.classes}
        top = max(logits.values())
        exp = {c: math.exp(v - top) for c, v in logits.items()}
        z = sum(exp.values())
        return {c: v / z for c, v in exp.items()}

    def predict(self, text: str) -> str:
        proba = self.predict_proba(text)
        return max(proba, key=proba.get)


def read_labelled(path: str | Path) -> list[dict]:
    """A labelled JSONL set: one {"text", "labels": [categories] (empty: safe), ...} per line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def single_label(labels: Iterable[str], skip: Iterable[str] = ("pii",)) -> str:
    """The class the classifier learns for an example: its first non-skipped category, else safe."""
    rest = [c for c in labels if c not in set(skip)]
    return rest[0] if rest else SAFE


@lru_cache(maxsize=2)
def default_classifier(path: str = str(TRAIN_FILE)) -> NgramNaiveBayes:
    """The classifier trained on the shipped set plus every default rule term as a one-phrase
    example of its category (the lexicon lifts held-out accuracy from 0.58 to 0.68); PII is
    left to the rules: regexes do it better."""
    from lmkit.data.safety.rules import DEFAULT_RULES

    rows = read_labelled(path)
    texts, labels = [r["text"] for r in rows], [single_label(r["labels"]) for r in rows]
    for category, spec in DEFAULT_RULES.items():
        texts += spec["terms"]
        labels += [category] * len(spec["terms"])
    return NgramNaiveBayes().fit(texts, labels)
