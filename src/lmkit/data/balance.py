"""Class balance: over- and under-sampling, per-class weights and a weighted sampler.

A classifier trained on 95 % negatives learns to say "negative". Three standard remedies:

* `resample(records, labels, mode)`: ``"over"`` repeats examples of the smaller classes
  (drawn with replacement beyond whole copies) up to the largest class's count, ``"under"``
  keeps a random subset of every class down to the smallest one's count;
* `class_weights(labels, scheme)`: ``"inverse"`` (w_c ∝ 1/n_c), ``"sqrt_inverse"``
  (∝ 1/√n_c) or ``"effective"`` (Cui et al. 2019: ∝ (1−β)/(1−β^n_c)), normalised so that the
  mean weight over the examples is 1, ready for ``cross_entropy(weight=...)``;
* `balanced_sampler(labels)`: a ``torch.utils.data.WeightedRandomSampler`` drawing every
  class equally often, for a ``DataLoader`` that feeds the Trainer.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Hashable, Sequence, TypeVar

from lmkit.errors import ConfigError

T = TypeVar("T")
SCHEMES = ("inverse", "sqrt_inverse", "effective")


def class_weights(labels: Sequence[Hashable], scheme: str = "inverse", beta: float = 0.999) -> dict[Hashable, float]:
    """One weight per class; the weights average 1 over the examples."""
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r}: choose one of {', '.join(SCHEMES)}")
    counts = Counter(labels)
    if not counts:
        raise ConfigError("class_weights needs at least one label")
    if scheme == "inverse":
        raw = {c: 1.0 / n for c, n in counts.items()}
    elif scheme == "sqrt_inverse":
        raw = {c: n ** -0.5 for c, n in counts.items()}
    else:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta={beta} must be in [0, 1)")
        raw = {c: (1.0 - beta) / (1.0 - beta ** n) for c, n in counts.items()}
    mean = sum(raw[c] * n for c, n in counts.items()) / len(labels)
    return {c: w / mean for c, w in raw.items()}


def resample(items: Sequence[T], labels: Sequence[Hashable], mode: str = "over", seed: int = 0) -> list[T]:
    """Items over- or under-sampled to equal class counts, in a seeded random order."""
    if mode not in ("over", "under"):
        raise ConfigError(f"mode={mode!r}: choose 'over' or 'under'")
    if len(items) != len(labels):
        raise ConfigError(f"{len(items)} items but {len(labels)} labels")
    rng = random.Random(f"resample:{seed}")
    groups: dict[Hashable, list[T]] = {}
    for item, label in zip(items, labels):
        groups.setdefault(label, []).append(item)
    target = (max if mode == "over" else min)(len(g) for g in groups.values())
    out: list[T] = []
    for label in sorted(groups, key=str):
        group = groups[label]
        if mode == "under":
            out.extend(rng.sample(group, target))
        else:
            whole, rest = divmod(target, len(group))
            out.extend(group * whole)
            out.extend(rng.sample(group, rest))
    rng.shuffle(out)
    return out


def balanced_sampler(labels: Sequence[Hashable], num_samples: int | None = None, seed: int = 0,
                     scheme: str = "inverse"):
    """A ``WeightedRandomSampler`` whose draws follow `class_weights` (``inverse``: balanced classes)."""
    import torch

    weights = class_weights(labels, scheme)
    per_example = torch.tensor([weights[label] for label in labels], dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(per_example, num_samples or len(labels), replacement=True,
                                                  generator=generator)
