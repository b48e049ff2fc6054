"""Multi-task and multi-domain mixtures: temperature sampling that feeds the Trainer.

With sources of n_1..n_k examples, sampling in proportion to size drowns the small ones and
sampling uniformly repeats them to death. Temperature sampling (Arivazhagan et al. 2019; T5,
mT5, XLM-R) draws source i with probability

    p_i = n_i^(1/T) / Σ_j n_j^(1/T)

T = 1 is proportional, T → ∞ uniform; T = 2..5 is the usual compromise. Explicit weights
replace the formula when given.

`MixtureDataset` is what the Trainer consumes: an iterable of batches (dicts of tensors,
stacked by `stack_collate` unless another collate function is given) or of single examples
(``batch_size=None``, e.g. for a ``DataLoader``). Each epoch draws `samples_per_epoch`
examples: the source of every draw from ``default_rng([seed, epoch])``, the example within a
source by walking that source's own seeded permutation (a small source wraps around, i.e. is
over-sampled). `state_dict()` / `load_state_dict()` save the position, so a resumed training
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from lmkit.data.packing import stack_collate
from lmkit.errors import ConfigError


def temperature_weights(sizes: Mapping[str, int], temperature: float = 1.0) -> dict[str, float]:
    """p_i ∝ n_i^(1/T), normalised; ``temperature=inf`` gives the uniform mixture."""
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be > 0")
    if not sizes or any(n <= 0 for n in sizes.values()):
        raise ConfigError(f"every source needs at least one example, got sizes {dict(sizes)}")
    raw = {k: (1.0 if np.isinf(temperature) else float(n) ** (1.0 / temperature)) for k, n in sizes.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


class MixtureDataset(torch.utils.data.IterableDataset):
    """Draw examples from named map-style sources by temperature (or given) weights."""

    def __init__(self, sources: Mapping[str, Sequence[Any]], temperature: float = 1.0,
                 weights: Mapping[str, float] | None = None, samples_per_epoch: int | None = None,
                 batch_size: int | None = None, collate_fn: Callable[[list], Any] | None = None,
                 seed: int = 0, with_source: bool = False) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("a mixture needs at least one source")
        self.sources = dict(sources)
        self.names = list(self.sources)
        self.sizes = {k: len(v) for k, v in self.sources.items()}
        if weights is not None:
            missing = set(self.names) ^ set(weights)
            if missing or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ConfigError(f"weights must give a non-negative weight to exactly the sources {self.names}")
            total = sum(weights.values())
            self.weights = {k: weights[k] / total for k in self.names}
        else:
            self.weights = temperature_weights(self.sizes, temperature)
        self.samples_per_epoch = samples_per_epoch or sum(self.sizes.values())
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.batch_size = batch_size
        self.collate_fn = collate_fn or stack_collate
        self.seed, self.with_source = seed, with_source
        self.epoch, self.drawn = 0, 0  # position: examples drawn in the current epoch

    def __len__(self) -> int:
        """Batches (or examples) per epoch."""
        return self.samples_per_epoch // self.batch_size if self.batch_size else self.samples_per_epoch

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, example index) of every draw of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        p = np.array([self.weights[k] for k in self.names])
        choice = rng.choice(len(self.names), size=self.samples_per_epoch, p=p)
        index = np.empty(self.samples_per_epoch, dtype=np.int64)
        for s, name in enumerate(self.names):
            where = np.flatnonzero(choice == s)
            perm = np.random.default_rng([self.seed, epoch, s]).permutation(self.sizes[name])
            index[where] = perm[np.arange(len(where)) % self.sizes[name]]
        return choice, index

    def _example(self, source: int, index: int) -> Any:
        item = self.sources[self.names[source]][int(index)]
        if self.with_source and isinstance(item, dict):
            item = {**item, "source": self.names[source]}
        return item

    def __iter__(self) -> Iterator[Any]:
        choice, index = self.plan(self.epoch)
        step = self.batch_size or 1
        end = len(choice) - (len(choice) % step)
        while self.drawn + step <= end:
            start = self.drawn
            self.drawn += step
            if self.batch_size is None:
                yield self._example(choice[start], index[start])
            else:
                yield self.collate_fn([self._example(choice[i], index[i]) for i in range(start, start + step)])
        self.epoch += 1
        self.drawn = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])
