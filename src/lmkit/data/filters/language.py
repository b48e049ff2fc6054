"""Language identification by a character n-gram model trained here (no download, no library).

A multinomial naive Bayes over character 1..3-grams (Cavnar & Trenkle's n-gram profiles in
probabilistic form, the idea behind langid.py and fastText's lid models): each label keeps its
`top_k` most frequent n-grams with add-one (Laplace) smoothed log probabilities, and a text goes to the
label under which its n-grams are most likely. `confidence` is the softmax of the per-n-gram
mean log-likelihoods.

`default_identifier()` trains on lmkit's own corpora (`lmkit.corpus`): English prose (Python's
language reference), Chinese prose (the LLM notes) and code (the standard library's source),
the three labels ``en``, ``zh`` and ``code``; a model for other languages is trained the same
way from any text (`LanguageIdentifier.train`) and saved as JSON. A well-kept library such as
fastText's ``lid.176`` knows 176 languages but needs a 126 MB download; this one needs none and
answers the question a code/English/Chinese corpus asks.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from lmkit.atomic import atomic_write_text
from lmkit.data.filters.base import DocumentFilter, Dropped, FilterError, FilterResult

_NEWLINES = re.compile(r"[\r\n\t]+")


def char_ngrams(text: str, orders: Iterable[int] = (1, 2, 3)) -> list[str]:
    """Character n-grams of `text`, padded by spaces; line breaks become spaces but runs of spaces
    stay (indentation is a strong sign of code)."""
    s = " " + _NEWLINES.sub(" ", text.strip()) + " "
    return [s[i:i + n] for n in orders for i in range(len(s) - n + 1)]


class LanguageIdentifier:
    """Naive Bayes over character n-grams: `predict(text)` -> (label, confidence)."""

    def __init__(self, log_probs: dict[str, dict[str, float]], unseen: dict[str, float],
                 orders: tuple[int, ...] = (1, 2, 3)) -> None:
        self.log_probs, self.unseen, self.orders = log_probs, unseen, tuple(orders)
        self.labels = sorted(log_probs)

    @classmethod
    def train(cls, texts: Mapping[str, str], orders: tuple[int, ...] = (1, 2, 3), top_k: int = 20000) -> "LanguageIdentifier":
        """Fit one n-gram profile per label from `texts` ({label: training text})."""
        if len(texts) < 2:
            raise FilterError("a language identifier needs training text for at least two labels")
        counts = {label: Counter(char_ngrams(text, orders)) for label, text in texts.items()}
        vocab = len(set().union(*counts.values()))  # Laplace smoothing over the shared vocabulary
        log_probs, unseen = {}, {}
        for label, table in counts.items():
            denominator = sum(table.values()) + vocab
            log_probs[label] = {g: math.log((c + 1) / denominator) for g, c in table.most_common(top_k)}
            unseen[label] = math.log(1 / denominator)  # also for the rare n-grams left out of the table
        return cls(log_probs, unseen, orders)

    def scores(self, text: str) -> dict[str, float]:
        """Mean log-likelihood of the text's n-grams under each label."""
        grams = char_ngrams(text, self.orders)
        n = max(1, len(grams))
        out = {}
        for label in self.labels:
            table, floor = self.log_probs[label], self.unseen[label]
            out[label] = sum(table.get(g, floor) for g in grams) / n
        return out

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely label and its confidence in [0, 1]."""
        scores = self.scores(text)
        best = max(scores, key=scores.__getitem__)
        top = scores[best]
        z = sum(math.exp(4.0 * (s - top)) for s in scores.values())  # sharpened softmax of per-gram means
        return best, 1.0 / z

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps({"orders": list(self.orders), "unseen": self.unseen,
                                            "log_probs": self.log_probs}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LanguageIdentifier":
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(obj["log_probs"], obj["unseen"], tuple(obj["orders"]))


def corpus_samples(chars: int = 200_000) -> dict[str, str]:
    """Training text from `lmkit.corpus`: its first `chars` characters of English, Chinese and code.

    English is the start of `english_text()` (the language reference topics) and code the first
    standard-library files of `code_text()`, read directly so that no whole corpus is built.
    """
    from pydoc_data.topics import topics

    from lmkit.corpus import _stdlib_files, chinese_text

    en, total = [], 0
    for key in sorted(topics):
        en.append(topics[key].strip())
        total += len(en[-1])
        if total >= chars:
            break
    code, total = [], 0
    for path in _stdlib_files():
        try:
            code.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        total += len(code[-1])
        if total >= chars:
            break
    return {"en": "\n\n".join(en)[:chars], "zh": chinese_text()[:chars], "code": "\n".join(code)[:chars]}


def default_identifier(chars: int = 100_000) -> LanguageIdentifier:
    """An en / zh / code identifier trained on `corpus_samples(chars)`."""
    return LanguageIdentifier.train(corpus_samples(chars))


class LanguageFilter(DocumentFilter):
    """Keep documents whose predicted label is in `keep` with at least `min_confidence`."""

    name = "language"

    def __init__(self, keep: Iterable[str] = ("en", "zh"), min_confidence: float = 0.5,
                 identifier: LanguageIdentifier | None = None) -> None:
        self.keep_labels = sorted(keep)
        self.min_confidence = min_confidence
        self._identifier = identifier
        self.label_counts: dict[str, int] = {}

    @property
    def identifier(self) -> LanguageIdentifier:
        if self._identifier is None:
            self._identifier = default_identifier()
        return self._identifier

    def apply(self, text: str) -> FilterResult:
        label, confidence = self.identifier.predict(text)
        self.label_counts[label] = self.label_counts.get(label, 0) + 1
        if label not in self.keep_labels:
            return Dropped(f"language_{label}")
        if confidence < self.min_confidence:
            return Dropped("language_low_confidence")
        return text
