"""Detecting the green-list watermark: count green tokens, a one-sided z-test.

Without the watermark each scored token is green with probability gamma, independently, so
the green count G of T scored tokens has mean gamma*T and variance T*gamma*(1-gamma):

    z = (G - gamma*T) / sqrt(T * gamma * (1 - gamma)),   p = P(N(0,1) > z) = erfc(z/sqrt2)/2

A token is scored with the window before it (lefthash: context_width tokens; selfhash: the
window ending at the token itself), so the first context_width tokens (lefthash) or
context_width - 1 (selfhash) are not scored. Counting, BOS stripping and the optional
"each distinct n-gram once" rule follow Hugging Face's `WatermarkDetector`, so z-scores and
p-values equal its own. Deleting or replacing a token breaks the green/red test of at most
context_width + 1 tokens around it: the count degrades gracefully under editing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.watermark import GreenList, WatermarkConfig


@dataclass
class WatermarkScore:
    """The test on one text: tokens scored, green count and fraction, z-score, p-value, verdict."""

    num_tokens_scored: int
    num_green_tokens: int
    green_fraction: float
    z_score: float
    p_value: float
    prediction: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class WatermarkDetector:
    """Scores token sequences for the watermark of `config` over a `vocab_size` vocabulary.

    bos_token_id: stripped from the front when present (as HF); ignore_repeated_ngrams: count
    each distinct (context, token) window once, which stops a repeated phrase from inflating z.
    """

    def __init__(self, config: WatermarkConfig | dict[str, Any], vocab_size: int | None = None,
                 bos_token_id: int | None = None, ignore_repeated_ngrams: bool = False,
                 z_threshold: float = 4.0) -> None:
        self.config = WatermarkConfig.coerce(config)
        v = self.config.vocab_size or vocab_size
        if v is None:
            raise ConfigError("the watermark detector needs the vocabulary size (the model's vocab_size)")
        self.greens = GreenList(self.config, v)
        self.bos_token_id = bos_token_id
        self.ignore_repeated_ngrams = ignore_repeated_ngrams
        self.z_threshold = float(z_threshold)
        self._cache: dict[tuple[int, ...], bool] = {}

    def _green(self, window: tuple[int, ...]) -> bool:
        """Whether the last id of the window is green (selfhash: seeded by the window itself)."""
        hit = self._cache.get(window)
        if hit is None:
            selfhash = self.config.seeding_scheme == "selfhash"
            context = torch.tensor(window if selfhash else window[:-1], dtype=torch.long)
            hit = self._cache[window] = self.greens.is_green(context, window[-1])
        return hit

    def counts(self, ids: Sequence[int]) -> tuple[int, int]:
        """(tokens scored, green tokens) of one sequence."""
        ids = [int(i) for i in ids]
        if self.bos_token_id is not None and ids and ids[0] == self.bos_token_id:
            ids = ids[1:]
        w = self.config.context_width
        if len(ids) - w < 1:
            raise ConfigError(f"the watermark test needs at least {w + 1} tokens (context_width={w} are used "
                              f"for seeding), got {len(ids)}")
        n = w + (0 if self.config.seeding_scheme == "selfhash" else 1)
        freq = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
        if self.ignore_repeated_ngrams:
            return len(freq), sum(self._green(g) for g in freq)
        return sum(freq.values()), sum(c for g, c in freq.items() if self._green(g))

    def score(self, ids: Sequence[int] | torch.Tensor) -> WatermarkScore:
        """The z-test on one sequence of token ids (leave the prompt out: it is not watermarked)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        scored, green = self.counts(ids)
        z = z_score(green, scored, self.config.gamma)
        return WatermarkScore(scored, green, green / scored, z, p_value(z), z > self.z_threshold)

    def __call__(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> list[WatermarkScore]:
        return [self.score(row) for row in batch]


def z_score(green: int, scored: int, gamma: float) -> float:
    """How many standard deviations the green count lies above chance."""
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def p_value(z: float) -> float:
    """One-sided p-value of z under the standard normal (the chance of a count this green without a watermark)."""
    return 0.5 * math.erfc(z / math.sqrt(2))
