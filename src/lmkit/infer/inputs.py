"""What goes into a generation: prompts, the resolved config, and the left-padded batch.

Every entry point (`generate`, beam search, speculative decoding, the serving engine)
checks and lays out its prompts here, so a prompt too long for the context or an id outside
the vocabulary fails with the same clear message everywhere.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.infer.config import GenerationConfig
from lmkit.infer.sampling import NO_TOKEN
from lmkit.infer.stop import model_eos_ids


def prepare_prompts(
    input_ids: Sequence[Sequence[int]] | Sequence[int] | torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> list[list[int]]:
    """list[list[int]] | list[int] | tensor [T] or [B, T] (+ 1/0 mask) -> list of prompts."""
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.detach().cpu()
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ConfigError(f"input_ids must be [batch, seq] or [seq], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None:
            m = attention_mask.detach().cpu()
            if m.shape != ids.shape:
                raise ConfigError(f"attention_mask shape {tuple(m.shape)} differs from input_ids {tuple(ids.shape)}")
            prompts = [row[mrow.bool()].tolist() for row, mrow in zip(ids, m)]
        else:
            prompts = ids.tolist()
    else:
        seq = list(input_ids)
        if seq and all(isinstance(t, int) for t in seq):
            prompts = [list(seq)]
        else:
            prompts = [list(map(int, p)) for p in seq]
    if not prompts:
        raise ConfigError("no prompts given: input_ids is empty")
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty: give at least one token (e.g. the BOS token)")
    return prompts


def resolve_config(model, config: GenerationConfig | None = None, **overrides: Any) -> GenerationConfig:
    """config (or defaults) with overrides applied, and EOS/pad filled in from the model's config."""
    cfg = (config or GenerationConfig()).replace(**overrides) if overrides else (config or GenerationConfig())
    mcfg = getattr(model, "config", None)
    if cfg.eos_token_id is None:
        eos = model_eos_ids(model)
        if eos:
            cfg = cfg.replace(eos_token_id=eos if len(eos) > 1 else eos[0])
    if cfg.pad_token_id is None:
        pad = getattr(mcfg, "pad_token_id", None) if mcfg is not None else None
        if pad is None:
            pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
        cfg = cfg.replace(pad_token_id=pad)
    return cfg


def check_fits(model, prompts: list[list[int]], cfg: GenerationConfig) -> None:
    """Clear errors for prompts the model cannot take: too long, or ids outside the vocabulary."""
    mcfg = model.config
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > mcfg.max_seq_len:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens={cfg.max_new_tokens} = "
            f"{longest + cfg.max_new_tokens} is longer than the model's context "
            f"(max_seq_len={mcfg.max_seq_len}); shorten the prompt or lower max_new_tokens"
        )
    vocab = mcfg.vocab_size
    for i, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt {i} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
    for name, ids in (("eos_token_id", cfg.eos_token_ids), ("pad_token_id", [cfg.pad_token_id])):
        bad = [t for t in ids if t is not None and not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"{name} {bad} is outside the model's vocabulary [0, {vocab})")


def left_pad(prompts: list[list[int]], total: int | None = None, fill: int = NO_TOKEN,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts right-aligned in one batch, so every row's newest token sits in the same column.

    Returns ids [B, T] (T the longest prompt; `fill` in the padding slots) and the attention
    mask [B, total] (1 real or still to be generated, 0 padding; total defaults to T), or
    None for the mask when no row is padded.
    """
    lens = [len(p) for p in prompts]
    t = max(lens)
    ids = torch.full((len(prompts), t), fill, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p, dtype=torch.long)
    mask = None
    if any(n != t for n in lens):
        mask = torch.zeros(len(prompts), total or t, dtype=torch.long)
        for i, n in enumerate(lens):
            mask[i, t - n:] = 1
        mask = mask.to(device)
    return ids.to(device), mask


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Tokenize a prompt; special tokens written in the text (chat templates) are recognised."""
    try:
        return tokenizer.encode(prompt, allowed_special="all")
    except TypeError:
        return tokenizer.encode(prompt)
