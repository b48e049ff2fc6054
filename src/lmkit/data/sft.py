"""Supervised fine-tuning (SFT) data: instruction files -> token ids with assistant-only labels.

Input shapes (one example per JSONL line, or a JSON list of them):
  OpenAI chat   {"messages": [{"role": "system"|"user"|"assistant"|..., "content": "..."}, ...]}
  Alpaca        {"instruction": "...", "input": "..." (optional), "output": "...", "system": optional}
                -> user = instruction (+ "\\n\\n" + input), assistant = output

Each conversation is rendered with a chat template (`lmkit.tokenizers.chat_template`);
`render_with_mask` marks the assistant replies and their end-of-turn tokens, and every other
token (system/user turns, headers) gets label -100, so the loss trains only what the model
must say. Labels are *unshifted* (lmkit and transformers shift inside forward).

Packing puts several examples in one row of `seq_len` tokens (first fit, no example split):
  document_ids   0, 0, 0, 1, 1, ..., -1 (padding): `DecoderLM.forward(document_ids=...)`
                 builds a block-diagonal causal mask, so no token sees another example,
                 and restarts the positions at 0 for each example;
  labels         the first token of each example is -100, so the last token of one example
                 is never asked to predict the next example's first token.
A packed row therefore gives every example exactly the loss it has on its own (tested).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from lmkit.errors import ConfigError, LmkitError, TokenizerError
from lmkit.jsonl import iter_jsonl

IGNORE = -100


class SFTDataError(LmkitError, ValueError):
    """A malformed row in an SFT data file (the message names the file and line)."""


# ---- reading ------------------------------------------------------------------------------
def alpaca_to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    instruction, inp, output = row.get("instruction"), row.get("input", ""), row.get("output")
    for key, val in (("instruction", instruction), ("output", output)):
        if not isinstance(val, str):
            raise ValueError(f"Alpaca field {key!r} must be a string, got {type(val).__name__}")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise ValueError(f"Alpaca field 'input' must be a string, got {type(inp).__name__}")
    user = instruction + ("\n\n" + inp if inp.strip() else "")
    msgs = []
    if isinstance(row.get("system"), str) and row["system"]:
        msgs.append({"role": "system", "content": row["system"]})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def row_to_messages(row: Any, roles: Sequence[str] = ("system", "user", "assistant", "tool")) -> list[dict[str, str]]:
    """One data row (OpenAI messages or Alpaca) -> a validated message list (ValueError if malformed)."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be an object with 'role' and 'content'")
            if m["role"] not in roles:
                raise ValueError(f"message {i} has unknown role {m['role']!r}; expected one of {list(roles)}")
            if not isinstance(m["content"], str):
                raise ValueError(f"message {i}: 'content' must be a string, got {type(m['content']).__name__}")
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
    elif "instruction" in row or "output" in row:
        msgs = alpaca_to_messages(row)
    else:
        raise ValueError(
            f"row has neither 'messages' (OpenAI chat) nor 'instruction'/'output' (Alpaca); keys: {sorted(row)}"
        )
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("the conversation has no assistant message, so there is nothing to train on")
    return msgs


def read_sft_file(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """Conversations from a .jsonl (one row per line) or .json (a list of rows) file.
    A malformed row raises SFTDataError naming the file and the line (JSONL) or index (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise SFTDataError(f"SFT data file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SFTDataError(f"{path}: not UTF-8 text ({exc})") from exc
    out: list[list[dict[str, str]]] = []
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SFTDataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        if isinstance(rows, dict):
            rows = [rows]
        if not isinstance(rows, list):
            raise SFTDataError(f"{path}: expected a JSON list of examples, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            try:
                out.append(row_to_messages(row))
            except ValueError as exc:
                raise SFTDataError(f"{path}: example {i} (0-based): {exc}") from exc
    else:
        for lineno, row in iter_jsonl(path, SFTDataError):
            try:
                out.append(row_to_messages(row))
            except ValueError as exc:
                raise SFTDataError(f"{path}:{lineno}: {exc}") from exc
    if not out:
        raise SFTDataError(f"{path}: no examples")
    return out


# ---- tokenizing -----------------------------------------------------------------------------
@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on assistant tokens

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_conversation(messages, tokenizer, template, max_len: int | None = None) -> SFTExample:
    """Render + tokenize one conversation; labels are the ids on assistant tokens, else -100."""
    ids, mask = template.render_with_mask(messages, tokenizer)
    labels = [i if m else IGNORE for i, m in zip(ids, mask)]
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return SFTExample(list(ids), labels)


def tokenize_conversations(conversations, tokenizer, template, max_len: int | None = None) -> list[SFTExample]:
    """Tokenize all; examples whose assistant tokens were all cut off by max_len are dropped
    (ConfigError if none is left)."""
    if isinstance(template, str):
        from lmkit.tokenizers.chat_template import get_template

        template = get_template(template)
    out = []
    for i, conv in enumerate(conversations):
        try:
            ex = tokenize_conversation(conv, tokenizer, template, max_len)
        except TokenizerError as exc:
            raise TokenizerError(f"example {i}: {exc}") from exc
        if any(label != IGNORE for label in ex.labels[1:]):
            out.append(ex)
    if not out:
        raise ConfigError(
            f"no example keeps an assistant token within max_len={max_len}; raise max_len"
        )
    return out


# ---- batches ----------------------------------------------------------------------------------
class SFTDataset(torch.utils.data.Dataset):
    """Variable-length examples; use `pad_collate` to batch them."""

    def __init__(self, examples: Sequence[SFTExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ex = self.examples[i]
        return {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}


class PadCollate:
    """Right-pad a list of examples to the longest: attention_mask 0 and labels -100 on padding."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        t = max(len(e["input_ids"]) for e in examples)
        b = len(examples)
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        labels = torch.full((b, t), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = e["input_ids"]
            labels[i, :n] = e["labels"]
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack_examples(examples: Sequence[SFTExample], seq_len: int, pad_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """First-fit packing into rows of exactly `seq_len` tokens (examples longer than seq_len are
    truncated to it). Each row: input_ids, labels, document_ids ([seq_len]; padding has id -1)."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2, got {seq_len}")
    bins: list[list[SFTExample]] = []
    free: list[int] = []
    for ex in examples:
        if len(ex) > seq_len:
            ex = SFTExample(ex.input_ids[:seq_len], ex.labels[:seq_len])
        for j, room in enumerate(free):
            if len(ex) <= room:
                bins[j].append(ex)
                free[j] -= len(ex)
                break
        else:
            bins.append([ex])
            free.append(seq_len - len(ex))
    rows = []
    for group in bins:
        ids, labels, docs = [], [], []
        for d, ex in enumerate(group):
            ids += ex.input_ids
            labels += [IGNORE] + ex.labels[1:]  # never predict across an example boundary
            docs += [d] * len(ex)
        pad = seq_len - len(ids)
        rows.append({
            "input_ids": torch.tensor(ids + [pad_id] * pad),
            "labels": torch.tensor(labels + [IGNORE] * pad),
            "document_ids": torch.tensor(docs + [-1] * pad),
        })
    return rows


class PackedSFTDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[SFTExample], seq_len: int, pad_id: int = 0) -> None:
        self.rows = pack_examples(examples, seq_len, pad_id)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def sft_loader(
    examples: Sequence[SFTExample], batch_size: int, *, pack: bool = False, seq_len: int | None = None,
    pad_id: int = 0, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
):
    """A resumable `PackedLoader` over SFT examples: packed rows or right-padded batches."""
    from lmkit.data.packing import PackedLoader, stack_collate

    if pack:
        if seq_len is None:
            raise ConfigError("packing needs seq_len")
        return PackedLoader(PackedSFTDataset(examples, seq_len, pad_id), batch_size, shuffle=shuffle, seed=seed,
                            drop_last=drop_last, collate_fn=stack_collate)
    return PackedLoader(SFTDataset(examples), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                        collate_fn=PadCollate(pad_id))


def load_sft_examples(
    path: str | os.PathLike, tokenizer, template="chatml", max_len: int | None = None
) -> list[SFTExample]:
    """read_sft_file + tokenize_conversations."""
    return tokenize_conversations(read_sft_file(path), tokenizer, template, max_len)


def assistant_fraction(examples: Iterable[SFTExample]) -> float:
    """Share of tokens that carry a label (how much of the data the loss sees)."""
    n = t = 0
    for ex in examples:
        n += len(ex)
        t += sum(1 for label in ex.labels if label != IGNORE)
    return t / max(n, 1)


# ---- a synthetic instruction task (demos, tests, benchmarks) --------------------------------------
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("day", "night"),
              ("open", "closed"), ("old", "new"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
              ("full", "empty"), ("hard", "soft"), ("high", "low"), ("long", "short"), ("wet", "dry"),
              ("rich", "poor"), ("loud", "quiet"), ("thick", "thin"), ("left", "right"), ("win", "lose")]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def toy_pretrain_text(n: int, seed: int = 0) -> str:
    """Plain sentences with the facts of `toy_sft_rows` (a base model to fine-tune learns them first)."""
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.choice(_OPPOSITES)
            lines.append(f"The opposite of {a} is {b}. The opposite of {b} is {a}.")
        else:
            i = rng.randrange(len(_NUMBERS) - 1)
            lines.append(f"After {_NUMBERS[i]} comes {_NUMBERS[i + 1]}.")
    return "\n".join(lines) + "\n"


def toy_sft_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` OpenAI-format rows of a small instruction task: opposites ("What is the opposite of
    hot?" -> "cold.") and counting ("What comes after four?" -> "five."), in a few phrasings."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.choice(_OPPOSITES)
            if rng.random() < 0.5:
                a, b = b, a
            q = rng.choice(["What is the opposite of {}?", "Give the opposite of {}.", "Opposite of {}?"]).format(a)
            ans = f"The opposite of {a} is {b}."
        else:
            i = rng.randrange(len(_NUMBERS) - 1)
            q = rng.choice(["What comes after {}?", "Which number follows {}?", "Count on from {}."]).format(_NUMBERS[i])
            ans = f"After {_NUMBERS[i]} comes {_NUMBERS[i + 1]}."
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
    return rows
