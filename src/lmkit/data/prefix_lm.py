"""Prefix language modelling (前缀语言模型; UniLM, T5's prefix-LM, GLM/ChatGLM's prefix decoder).

A sequence is split at a boundary p: the prefix ``x[:p]`` is read with full (bidirectional)
attention and the rest is generated left to right. The decoder builds that mask from
``prefix_len``; the loss covers the target only, so labels are -100 on the prefix
positions (and on padding). With labels shifted inside the model, the first target token
``x[p]`` is predicted from the last prefix position, which sees the whole prefix.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError

IGNORE_INDEX = -100


class PrefixLMCollator:
    """Sequences -> a prefix-LM batch for ``DecoderLM(**batch)``.

    Examples are ids (list/array/tensor, or a dict with input_ids) split at a boundary
    drawn uniformly from [min_prefix, len - min_target] — or at a fixed `prefix_len`
    (clipped to leave `min_target` target tokens) — or dicts with explicit ``prefix`` and
    ``target`` ids. Output: input_ids, attention_mask (right padding with `pad_id`),
    prefix_len [B], labels (input ids, -100 on prefix and padding).
    """

    def __init__(
        self,
        *,
        pad_id: int,
        prefix_len: int | None = None,
        min_prefix: int = 1,
        min_target: int = 1,
        seed: int = 0,
    ) -> None:
        if min_prefix < 1 or min_target < 1:
            raise ConfigError(f"min_prefix and min_target must be >= 1, got {min_prefix} and {min_target}")
        if prefix_len is not None and prefix_len < 1:
            raise ConfigError(f"prefix_len must be >= 1, got {prefix_len}")
        self.pad_id = pad_id
        self.prefix_len = prefix_len
        self.min_prefix, self.min_target = min_prefix, min_target
        self.seed = seed
        self.calls = 0

    def _split(self, ex: Any, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        if isinstance(ex, dict) and "prefix" in ex:
            prefix = np.asarray(ex["prefix"], dtype=np.int64).reshape(-1)
            target = np.asarray(ex["target"], dtype=np.int64).reshape(-1)
            if prefix.size < 1 or target.size < 1:
                raise ConfigError("prefix and target must each hold at least one token")
            return np.concatenate([prefix, target]), int(prefix.size)
        if isinstance(ex, dict):
            ex = ex["input_ids"]
        ids = (ex.numpy() if torch.is_tensor(ex) else np.asarray(ex)).astype(np.int64).reshape(-1)
        lo, hi = self.min_prefix, ids.size - self.min_target
        if hi < lo:
            raise ConfigError(
                f"a sequence of {ids.size} tokens cannot hold min_prefix={self.min_prefix} "
                f"+ min_target={self.min_target}"
            )
        p = min(max(self.prefix_len, lo), hi) if self.prefix_len is not None else int(rng.integers(lo, hi + 1))
        return ids, p

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty list of examples")
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        split = [self._split(e, rng) for e in examples]
        n, width = len(split), max(ids.size for ids, _ in split)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        prefix_len = torch.empty(n, dtype=torch.long)
        for r, (ids, p) in enumerate(split):
            t = torch.from_numpy(ids)
            input_ids[r, : t.numel()] = t
            attention[r, : t.numel()] = 1
            labels[r, p : t.numel()] = t[p:]
            prefix_len[r] = p
        return {"input_ids": input_ids, "attention_mask": attention, "prefix_len": prefix_len, "labels": labels}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])
