"""Packed causal-LM examples: the token stream cut into fixed-length windows.

Documents (each ending with its eos id, see `lmkit.data.shards`) are concatenated and cut
into windows regardless of document boundaries — the standard GPT recipe: no padding, no
attention mask, the separator tells the model a new document starts. A window of T+1
tokens gives T next-token targets; consecutive windows overlap by one token so that every
token of the stream after the first is a target exactly once.

Two label conventions:

* ``labels_shifted=False`` (default; lmkit and Hugging Face models shift inside
  ``forward``): ``input_ids == labels`` = one window of ``seq_len`` tokens, windows start
  every ``seq_len - 1`` tokens (T = seq_len - 1 targets each).
* ``labels_shifted=True`` (for a loss that does not shift): windows of ``seq_len + 1``
  tokens every ``seq_len`` tokens; ``input_ids = w[:-1]``, ``labels = w[1:]``.

`PackedLoader` turns any map-style dataset into shuffled batches whose position
(epoch, index) can be saved and restored exactly and which can be sharded by rank for
data-parallel training without a DataLoader. lmkit's Trainer already deals whole batches
out to ranks (and checkpoints `state_dict()`), so hand it a loader with the default
rank=0, world_size=1; use rank/world_size in a training loop of your own.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length windows over a token stream (`TokenShards`, numpy array or id list)."""

    def __init__(self, tokens: Any, seq_len: int, *, labels_shifted: bool = False, stride: int | None = None) -> None:
        if seq_len < 2:
            raise ConfigError(f"seq_len must be >= 2, got {seq_len}")
        self.tokens = tokens if hasattr(tokens, "read") else np.asarray(tokens)
        self.seq_len = seq_len
        self.labels_shifted = labels_shifted
        self.window = seq_len + 1 if labels_shifted else seq_len
        self.stride = stride if stride is not None else self.window - 1
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        n = len(self.tokens)
        self._len = 0 if n < self.window else (n - self.window) // self.stride + 1
        if self._len == 0:
            raise ConfigError(
                f"the token stream has {n} tokens, fewer than one window of {self.window}; "
                "lower seq_len or add data"
            )

    def __len__(self) -> int:
        return self._len

    def window_ids(self, i: int) -> np.ndarray:
        """The raw window i as int64 ids."""
        if not 0 <= i < self._len:
            raise IndexError(f"window {i} out of range [0, {self._len})")
        start = i * self.stride
        if hasattr(self.tokens, "read"):
            w = self.tokens.read(start, self.window)
        else:
            w = self.tokens[start : start + self.window]
        return np.asarray(w, dtype=np.int64)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = torch.from_numpy(self.window_ids(int(i)))
        if self.labels_shifted:
            return {"input_ids": w[:-1], "labels": w[1:].clone()}
        return {"input_ids": w, "labels": w.clone()}


def stack_collate(examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length examples into a batch dict of [B, T] tensors."""
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


class ResumableSampler(torch.utils.data.Sampler):
    """Per-epoch seeded permutation of ``range(num_examples)``, sharded by rank, resumable.

    Epoch e's order is ``permutation(num_examples)`` drawn from ``default_rng([seed, e])``
    (identical on every rank); rank r takes every world_size-th index starting at r. With
    ``drop_last`` the tail that does not divide by world_size is dropped, otherwise it is
    filled by wrapping around, so every rank sees the same number of examples.

    Iterating yields this rank's remaining indices of the current epoch and advances the
    position; with a DataLoader that prefetches, save the position from `PackedLoader`
    instead, which counts only what was handed out.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_examples < 1:
            raise ConfigError(f"num_examples must be >= 1, got {num_examples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        if drop_last and num_examples < world_size:
            raise ConfigError(f"{num_examples} examples cannot be split over {world_size} ranks with drop_last")
        self.num_examples, self.shuffle, self.seed = num_examples, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.index = 0  # examples of this rank's current epoch already handed out

    def __len__(self) -> int:
        """Examples per rank per epoch."""
        n = self.num_examples
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's whole index list for `epoch`."""
        n = self.num_examples
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        total = len(self) * self.world_size
        if total <= n:
            order = order[:total]
        else:
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (DistributedSampler's API)."""
        self.epoch, self.index = int(epoch), 0

    def advance(self, count: int) -> None:
        """Mark `count` more examples as consumed; rolls over to the next epoch at the end."""
        self.index += count
        if self.index >= len(self):
            self.epoch += 1
            self.index = 0

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        order = self.epoch_indices(epoch)
        while self.epoch == epoch and self.index < len(order):
            i = int(order[self.index])
            self.advance(1)
            yield i

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_examples", "world_size", "seed", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(
                    f"saved data position has {key}={state[key]!r} but this sampler has "
                    f"{getattr(self, key)!r}; the data or its settings changed since the checkpoint"
                )
        if not 0 <= state["index"] < max(1, len(self)):
            raise ConfigError(f"saved index {state['index']} outside [0, {len(self)})")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class PackedLoader:
    """Shuffled batches from a map-style dataset, with an exact, saveable position.

    One ``iter()`` yields the rest of the current epoch; the next ``iter()`` starts the
    next epoch (as the Trainer expects). `state_dict()` after a batch is the position
    after that batch, so restoring it into a fresh loader yields the identical following
    batches. If the collate function has ``state_dict``/``load_state_dict`` (the
    objective collators count their calls to derive their random masks), it is saved too.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        collate_fn: Callable[[list], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.collate_fn = collate_fn or stack_collate
        self.sampler = ResumableSampler(
            len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
        )
        if drop_last and len(self.sampler) < batch_size:
            raise ConfigError(
                f"{len(self.sampler)} examples per rank are fewer than one batch of {batch_size}; "
                "lower batch_size or set drop_last=False"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        s = self.sampler
        epoch = s.epoch
        order = s.epoch_indices(epoch)
        usable = len(self) * self.batch_size if self.drop_last else len(order)
        while s.epoch == epoch and s.index < usable:
            idx = order[s.index : min(s.index + self.batch_size, usable)]
            batch = self.collate_fn([self.dataset[int(i)] for i in idx])
            s.advance(len(idx))
            if s.epoch == epoch and s.index >= usable:  # the dropped tail: next epoch
                s.epoch, s.index = epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, Any]:
        state = {"sampler": self.sampler.state_dict(), "batch_size": self.batch_size}
        if hasattr(self.collate_fn, "state_dict"):
            state["collate"] = self.collate_fn.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ConfigError(
                f"saved data position was taken with batch_size={state['batch_size']}, "
                f"this loader has {self.batch_size}"
            )
        self.sampler.load_state_dict(state["sampler"])
        if "collate" in state and hasattr(self.collate_fn, "load_state_dict"):
            self.collate_fn.load_state_dict(state["collate"])
