"""The word list of an n-gram model: ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``.

Sentences are padded the way KenLM does it: one ``<s>`` before the first word (it is only
ever a context, never predicted) and one ``</s>`` after the last (predicted like a word, so
a sentence of m words contributes m + 1 predictions to the perplexity). A word that is not in
the vocabulary becomes ``<unk>`` (id 0). The literal strings ``<s>`` / ``</s>`` inside a
sentence are treated as unknown words too: they would otherwise fake a sentence boundary.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


class Vocabulary:
    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if words[:3] != [UNK, BOS, EOS]:
            raise ValueError(f"vocabulary must start with {UNK}, {BOS}, {EOS}; got {words[:3]}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            dup = [w for w, c in Counter(words).items() if c > 1][:5]
            raise ValueError(f"vocabulary has repeated words, e.g. {dup}")

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter = Counter()
        for s in sentences:
            counts.update(s)
        for special in (UNK, BOS, EOS):
            counts.pop(special, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 3)]
        return cls([UNK, BOS, EOS, *ranked])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, words: Sequence[str]) -> np.ndarray:
        """Ids of `words`; unknown words (and literal <s>, </s>) become <unk> = 0."""
        get = self.index.get
        ids = np.fromiter((get(w, UNK_ID) for w in words), dtype=np.int32, count=len(words))
        ids[(ids == BOS_ID) | (ids == EOS_ID)] = UNK_ID
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]
