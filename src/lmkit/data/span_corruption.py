"""T5's span corruption: the encoder-decoder denoising objective.

About 15% of the tokens, in spans of mean length 3, are removed from the input; each
removed span is replaced by one sentinel (``<extra_id_0>``, ``<extra_id_1>``, … — by
default the top ids of the vocabulary, ``vocab_size - 1`` downwards, as in T5). The
target lists each sentinel followed by the tokens it stands for, then EOS::

    original  Thank you for inviting me to your party last week .
    inputs    Thank you <X> me to your party <Y> week . </s>
    targets   <X> for inviting <Y> last </s>

(The notes' example target "[是的，小明，<X>，这件事，<Z>]" does not follow this rule; the
target for their input [我，<X>，听说，<Y>，吃，老鼠] is [<X>，在院子里，<Y>，猫，</s>].)

`random_spans_noise_mask` transcribes ``t5.data.preprocessors.random_spans_noise_mask``:
num_noise_tokens = round(length * noise_density) clipped to [1, length - 1];
num_noise_spans = round(num_noise_tokens / mean_noise_span_length), at least 1; noise and
non-noise tokens are each cut at random into that many non-empty spans, interleaved
starting with non-noise. Where the reference would fail (fewer non-noise tokens than
spans, only at very high noise densities) the span count is lowered to fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lmkit.errors import ConfigError
from lmkit.tokenizers.base import Tokenizer

IGNORE_INDEX = -100


@dataclass
class SpanCorruptionConfig:
    noise_density: float = 0.15  # fraction of tokens removed from the input
    mean_noise_span_length: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1.0:
            raise ConfigError(f"mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}")


def noise_span_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a sequence of `length` (the reference formulas)."""
    length = max(length, 2)
    num_noise = int(np.round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_noise_span_length)), 1)
    return num_noise, min(num_spans, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a random cut of `num_items` items into `num_segments` non-empty runs."""
    starts_segment = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    cuts = np.flatnonzero(starts_segment) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Boolean mask [length], True on noise; spans alternate non-noise, noise, non-noise, …

    The two random cuts draw ``rng.permutation`` once each (noise spans first), the
    counterpart of the reference's two seeded ``stateless_shuffle`` calls.
    """
    if length < 1:
        raise ConfigError(f"length must be >= 1, got {length}")
    if noise_density == 0.0:
        return np.zeros(length, dtype=bool)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    orig_length, length = length, max(length, 2)
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    mask = np.repeat(np.tile([False, True], num_spans), interleaved)
    return mask[:orig_length]


def default_sentinel_ids(vocab_size: int, count: int = 100) -> list[int]:
    """T5's sentinels: <extra_id_0> = vocab_size - 1, <extra_id_1> = vocab_size - 2, …"""
    return list(range(vocab_size - 1, max(vocab_size - 1 - count, -1), -1))


def sentinel_ids_from_tokenizer(tokenizer: Tokenizer, prefix: str = "<extra_id_", count: int | None = None) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, … in a tokenizer (stops at the first one missing)."""
    out: list[int] = []
    while count is None or len(out) < count:
        name = f"{prefix}{len(out)}>"
        idx = tokenizer.special_tokens.get(name, tokenizer.token_to_id(name))
        if idx is None:
            break
        out.append(int(idx))
    if not out:
        raise ConfigError(f"the tokenizer has no {prefix}0> sentinel; pass sentinel ids explicitly")
    return out


def corrupt_spans(
    tokens: Sequence[int] | np.ndarray,
    noise_mask: np.ndarray,
    sentinel_ids: Sequence[int],
    eos_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each noise span -> one sentinel in inputs, sentinel + span in targets.

    Sentinel k marks the k-th noise span in both; `eos_id` (if given) ends both.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    mask = np.asarray(noise_mask, dtype=bool)
    if tokens.shape != mask.shape:
        raise ConfigError(f"tokens {tokens.shape} and noise_mask {mask.shape} differ in shape")
    prev = np.concatenate([[False], mask[:-1]])
    span_start = mask & ~prev
    num_spans = int(span_start.sum())
    if num_spans > len(sentinel_ids):
        raise ConfigError(f"{num_spans} noise spans but only {len(sentinel_ids)} sentinel ids")
    sentinels = np.asarray(sentinel_ids[:num_spans], dtype=np.int64)
    inputs = tokens.copy()
    inputs[span_start] = sentinels
    inputs = inputs[~(mask & prev)]
    targets = np.insert(tokens[mask], np.flatnonzero(span_start[mask]), sentinels)
    if eos_id is not None:
        inputs = np.append(inputs, eos_id)
        targets = np.append(targets, eos_id)
    return inputs, targets


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens per example, target length) so that corrupted inputs are `inputs_length` long.

    T5's ``random_spans_helper``: feed windows of the first length to get inputs of
    exactly `inputs_length` (including EOS) and targets of the second.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


class SpanCorruptionCollator:
    """Token sequences -> a T5 batch for ``EncoderDecoderLM(**batch)``.

    Each example (ids as list/array/tensor, or a dict with input_ids) gets its own noise
    mask; output: input_ids, attention_mask (right-padded with `pad_id`), labels
    (targets, -100 on padding) and decoder_input_ids (labels shifted right after `pad_id`). The masks of call n
    come from (seed, n), saved by `state_dict()`.
    """

    def __init__(
        self,
        *,
        eos_id: int,
        pad_id: int,
        vocab_size: int | None = None,
        sentinel_ids: Sequence[int] | None = None,
        config: SpanCorruptionConfig | None = None,
        seed: int = 0,
    ) -> None:
        if sentinel_ids is None:
            if vocab_size is None:
                raise ConfigError("give vocab_size (sentinels from the top of the vocabulary) or sentinel_ids")
            sentinel_ids = default_sentinel_ids(vocab_size)
        self.sentinel_ids = [int(s) for s in sentinel_ids]
        self._sentinel_set = np.asarray(sorted(self.sentinel_ids), dtype=np.int64)
        self.eos_id, self.pad_id = eos_id, pad_id
        self.config = config or SpanCorruptionConfig()
        self.seed = seed
        self.calls = 0

    def _ids(self, ex: Any) -> np.ndarray:
        if isinstance(ex, dict):
            ex = ex["input_ids"]
        ids = ex.numpy() if torch.is_tensor(ex) else np.asarray(ex)
        ids = ids.astype(np.int64).reshape(-1)
        if ids.size == 0:
            raise ConfigError("cannot corrupt an empty sequence")
        clash = np.isin(ids, self._sentinel_set)
        if clash.any():
            raise ConfigError(
                f"the input contains sentinel id {int(ids[clash][0])}; sentinels must be ids that "
                "ordinary text never produces (e.g. the top of the vocabulary or <extra_id_*>)"
            )
        return ids

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty list of examples")
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        pairs = []
        for ex in examples:
            ids = self._ids(ex)
            mask = random_spans_noise_mask(
                ids.size, self.config.noise_density, self.config.mean_noise_span_length, rng
            )
            pairs.append(corrupt_spans(ids, mask, self.sentinel_ids, self.eos_id))
        n = len(pairs)
        src_len = max(p[0].size for p in pairs)
        tgt_len = max(p[1].size for p in pairs)
        input_ids = torch.full((n, src_len), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, src_len), dtype=torch.long)
        labels = torch.full((n, tgt_len), IGNORE_INDEX, dtype=torch.long)
        for r, (inp, tgt) in enumerate(pairs):
            input_ids[r, : inp.size] = torch.from_numpy(inp)
            attention[r, : inp.size] = 1
            labels[r, : tgt.size] = torch.from_numpy(tgt)
        # teacher forcing: the decoder reads the targets shifted right, starting from pad
        # (T5's decoder_start_token_id); given explicitly so evaluation without labels works
        decoder_input_ids = torch.full_like(labels, self.pad_id)
        decoder_input_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                "decoder_input_ids": decoder_input_ids}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])
