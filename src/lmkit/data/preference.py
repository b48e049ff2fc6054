"""Preference pairs (偏好数据): ``{"prompt", "chosen", "rejected"}`` rows -> padded token batches.

The data of reward modelling and DPO: for one prompt, a response people preferred
(``chosen``) and one they did not (``rejected``). A row is plain text::

    {"prompt": "2+2=", "chosen": "4", "rejected": "5"}

or chat messages (rendered with a `ChatTemplate`; the prompt is the conversation so far,
chosen/rejected are the assistant's reply as a string, a message, or a one-message list)::

    {"prompt": [{"role": "user", "content": "hi"}], "chosen": "Hello!", "rejected": [{"role": "assistant", "content": "go away"}]}

Tokenisation keeps prompt and completion apart: ``completion_mask`` is 1 exactly on the
tokens of the response (with EOS / the template's end-of-turn token), 0 on the prompt and
padding, so log-probabilities and losses see only what the policy chose to write
("prompt masking"). Plain-text rows encode prompt and completion separately (the
response's first token does not depend on how the prompt ended), as TRL does.

Bad input fails early with the line number: a missing or empty field, a non-string field,
chosen == rejected (no preference to learn), a prompt that leaves no room for a response
in the context. A pair longer than the context keeps its prompt and loses the end of the
responses (``truncation="completion"``, the default) or is an error (``"error"``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from lmkit.errors import LmkitError
from lmkit.jsonl import iter_jsonl

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(LmkitError, ValueError):
    """A preference row is malformed; the message names the file line."""


@dataclass
class PreferencePair:
    prompt: str | list[dict[str, Any]]
    chosen: str | list[dict[str, Any]]
    rejected: str | list[dict[str, Any]]
    line: int | None = None  # 1-based line in the source file (None: built in code)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class TokenizedPair:
    """Prompt ids and the two full sequences (prompt + response) with their response masks."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_mask: list[int]
    rejected_ids: list[int]
    rejected_mask: list[int]
    line: int | None = None


def _where(line: int | None, source: str | None = None) -> str:
    if line is None:
        return "preference row"
    return f"{source}:{line}" if source else f"line {line}"


def _reply(value: Any, where: str, name: str) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        if len(value) != 1 or value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
            raise PreferenceDataError(
                f"{where}: '{name}' must be the assistant's reply: a string or one message "
                f"{{'role': 'assistant', 'content': ...}}, got {json.dumps(value)[:120]}"
            )
        return value
    raise PreferenceDataError(f"{where}: '{name}' must be a string or an assistant message, got {type(value).__name__}")


def parse_preference_row(row: Any, line: int | None = None, source: str | None = None) -> PreferencePair:
    """Validate one row (a dict) and return it as a `PreferencePair`."""
    where = _where(line, source)
    if not isinstance(row, dict):
        raise PreferenceDataError(f"{where}: a preference row must be a JSON object, got {type(row).__name__}")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise PreferenceDataError(
            f"{where}: missing field(s) {missing}; every row needs 'prompt', 'chosen' and 'rejected'"
        )
    prompt = row["prompt"]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                                 for m in prompt):
            raise PreferenceDataError(f"{where}: a chat 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    elif not isinstance(prompt, str):
        raise PreferenceDataError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    chosen = _reply(row["chosen"], where, "chosen")
    rejected = _reply(row["rejected"], where, "rejected")
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        text = value if isinstance(value, str) else value[-1]["content"]
        if name != "prompt" and not text:
            raise PreferenceDataError(f"{where}: '{name}' is empty")
    if (chosen if isinstance(chosen, str) else chosen[0]["content"]) == (
        rejected if isinstance(rejected, str) else rejected[0]["content"]
    ):
        raise PreferenceDataError(f"{where}: 'chosen' and 'rejected' are identical, so there is no preference to learn")
    return PreferencePair(prompt, chosen, rejected, line)


def load_preference_jsonl(path: str | os.PathLike) -> list[PreferencePair]:
    """Every row of a JSONL file (blank lines skipped); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise PreferenceDataError(f"preference file {str(path)!r} does not exist")
    pairs = [parse_preference_row(row, n, str(path)) for n, row in iter_jsonl(path, PreferenceDataError)]
    if not pairs:
        raise PreferenceDataError(f"{path}: no preference rows found")
    return pairs


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of plain text (special-token strings in it stay text), for lmkit and transformers tokenizers."""
    try:
        return list(tokenizer.encode(text, allowed_special="none"))
    except TypeError:  # transformers tokenizers
        return list(tokenizer.encode(text, add_special_tokens=False))


def _tokenize_side(pair: PreferencePair, reply, tokenizer, prompt_ids, template, eos_id) -> tuple[list[int], list[int]]:
    if pair.is_chat:
        msg = {"role": "assistant", "content": reply if isinstance(reply, str) else reply[0]["content"]}
        ids, mask = template.render_with_mask(list(pair.prompt) + [msg], tokenizer)
        if ids[: len(prompt_ids)] != prompt_ids:
            raise PreferenceDataError(
                f"{_where(pair.line)}: the rendered reply does not extend the rendered prompt token by token "
                "(the template's generation prompt and the assistant turn disagree)"
            )
        return ids, [0] * len(prompt_ids) + mask[len(prompt_ids):]
    completion = encode_text(tokenizer, reply)
    if eos_id is not None:
        completion = completion + [int(eos_id)]
    return prompt_ids + completion, [0] * len(prompt_ids) + [1] * len(completion)


def tokenize_pair(
    pair: PreferencePair,
    tokenizer: Any,
    max_len: int,
    *,
    template=None,
    eos_id: int | None = None,
    bos_id: int | None = None,
    truncation: str = "completion",
    source: str | None = None,
) -> TokenizedPair:
    """Token ids of prompt + chosen and prompt + rejected with masks on the responses.

    Plain text: ``[bos] prompt`` then ``response [eos]``. Chat: the template renders the
    conversation; the reply's tokens up to and including end-of-turn are the response.
    """
    where = _where(pair.line, source)
    if truncation not in ("completion", "error"):
        raise ValueError(f"truncation must be 'completion' or 'error', got {truncation!r}")
    if pair.is_chat:
        if template is None:
            raise PreferenceDataError(f"{where}: chat-format rows need a chat template (template=...)")
        prompt_ids, _ = template.render_with_mask(pair.prompt, tokenizer, add_generation_prompt=True)
    else:
        prompt_ids = ([int(bos_id)] if bos_id is not None else []) + encode_text(tokenizer, pair.prompt)
    if not prompt_ids:
        raise PreferenceDataError(f"{where}: the prompt encodes to no tokens; give at least one (e.g. set bos_id)")
    if len(prompt_ids) >= max_len:
        raise PreferenceDataError(
            f"{where}: prompt of {len(prompt_ids)} tokens leaves no room for a response in the context of "
            f"{max_len} tokens; shorten the prompt or use a longer max_len"
        )
    sides = []
    for name, reply in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ids, mask = _tokenize_side(pair, reply, tokenizer, prompt_ids, template, eos_id)
        if sum(mask) == 0:
            raise PreferenceDataError(f"{where}: '{name}' encodes to no response tokens")
        if len(ids) > max_len:
            if truncation == "error":
                raise PreferenceDataError(
                    f"{where}: prompt + {name} is {len(ids)} tokens, longer than the context of {max_len}"
                )
            ids, mask = ids[:max_len], mask[:max_len]
        sides.append((ids, mask))
    (c_ids, c_mask), (r_ids, r_mask) = sides
    if c_ids == r_ids:
        raise PreferenceDataError(
            f"{where}: 'chosen' and 'rejected' are the same token sequence"
            + (" after truncation to the context" if truncation == "completion" else "")
        )
    return TokenizedPair(prompt_ids, c_ids, c_mask, r_ids, r_mask, pair.line)


def tokenize_pairs(pairs: Iterable[PreferencePair], tokenizer: Any, max_len: int, **kwargs: Any) -> list[TokenizedPair]:
    return [tokenize_pair(p, tokenizer, max_len, **kwargs) for p in pairs]


def pad_sequences(
    seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and completion_mask [N, T] for sequences of any lengths."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    t = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, t), int(pad_id), dtype=torch.long)
    att = torch.zeros((n, t), dtype=torch.long)
    comp = torch.zeros((n, t), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        sl = slice(0, len(s)) if padding_side == "right" else slice(t - len(s), t)
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        att[i, sl] = 1
        comp[i, sl] = torch.tensor(list(m), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the B chosen sequences first, then the B rejected ones."""
    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    masks = [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs]
    return pad_sequences(seqs, masks, pad_id, padding_side)


class PairBatches:
    """Iterable of collated pair batches, reshuffled every epoch (seeded: epoch e uses seed + e).

    ``extra[i]`` (optional per-pair tensors such as precomputed reference log-probs) are
    gathered into each batch under their key.
    """

    def __init__(self, pairs: Sequence[TokenizedPair], batch_size: int, pad_id: int, *, shuffle: bool = True,
                 seed: int = 0, padding_side: str = "right", extra: dict[str, torch.Tensor] | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not pairs:
            raise PreferenceDataError("no preference pairs to batch")
        self.pairs, self.batch_size, self.pad_id = list(pairs), batch_size, pad_id
        self.shuffle, self.seed, self.padding_side = shuffle, seed, padding_side
        self.extra = extra or {}
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.pairs) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = list(range(len(self.pairs)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = collate_pairs([self.pairs[i] for i in idx], self.pad_id, self.padding_side)
            for key, values in self.extra.items():
                batch[key] = values[idx]
            yield batch
