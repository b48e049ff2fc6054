"""Sampling text from an n-gram model: the "pure" generation the notes describe.

Start from <s> (plus an optional prompt), draw the next word from p(w | last n-1 tokens),
append, repeat until </s> or `max_words`. `temperature` reshapes p as p^(1/T).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmkit.ngram.base import NGramLM
from lmkit.ngram.vocab import BOS_ID, EOS_ID, UNK_ID


def sample_sentence(model: NGramLM, rng: np.random.Generator | int | None = None, max_words: int = 50,
                    prompt: Sequence[str] = (), temperature: float = 1.0, allow_unk: bool = False) -> list[str]:
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(rng)
    ids = [BOS_ID, *[int(i) for i in model.vocab.encode(list(prompt))]]
    out: list[int] = []
    for _ in range(max_words):
        p = model.next_distribution(ids)
        if not allow_unk:
            p[UNK_ID] = 0.0
        if temperature != 1.0:
            p = np.power(p, 1.0 / temperature)
        p = p / p.sum()
        w = int(rng.choice(len(p), p=p))
        if w == EOS_ID:
            break
        ids.append(w)
        out.append(w)
    return list(prompt) + model.vocab.decode(out)
