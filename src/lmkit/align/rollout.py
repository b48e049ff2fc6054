"""Rollouts: sample responses with lmkit's inference engine and score them.

Sampling is `lmkit.infer.generate` (batched, KV cache, temperature/top-k/top-p); nothing
here re-implements it. The policy is put in eval mode while sampling (no dropout) and
restored after. Each rollout row is prompt + response, right-padded, with
``completion_mask`` = 1 on the response tokens (EOS included when the model produced it).
Rewards come from a reward model (scored on the token sequence, so it must share the
tokenizer) or from a Python function ``fn(prompts, completions, **kwargs)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from lmkit.errors import ConfigError


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [N, T] prompt + response, right-padded
    attention_mask: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 on response tokens
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    ended: list[bool]  # the response finished with EOS / a stop (not cut by max_new_tokens)
    prompt_texts: list[str] | None = None
    completion_texts: list[str] | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)  # per-row reward kwargs

    def __len__(self) -> int:
        return len(self.prompt_ids)


@torch.no_grad()
def sample_rollouts(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                    eos_token_id: int | list[int] | None = None, pad_id: int = 0, tokenizer=None,
                    seed: int | None = None) -> Rollout:
    """Sample one response per prompt (repeat prompts in the list for groups)."""
    from lmkit.infer.generate import generate

    was = model.training
    model.eval()
    try:
        out = generate(model, [list(p) for p in prompts], do_sample=True, temperature=temperature, top_k=top_k,
                       top_p=top_p, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_id,
                       seed=seed, tokenizer=tokenizer)
    finally:
        model.train(was)
    dev = next(model.parameters()).device
    seqs = [list(p) + list(r) for p, r in zip(prompts, out.sequences)]
    t = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, t), int(pad_id), dtype=torch.long)
    att = torch.zeros((n, t), dtype=torch.long)
    comp = torch.zeros((n, t), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, out.sequences)):
        s = list(p) + list(r)
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        comp[i, len(p) : len(s)] = 1
    prompt_texts = None
    if tokenizer is not None:
        prompt_texts = [_decode_prompt(tokenizer, list(p)) for p in prompts]
    return Rollout(ids.to(dev), att.to(dev), comp.to(dev), [list(p) for p in prompts], out.sequences,
                   [r == "stop" for r in out.finish_reasons], prompt_texts, out.texts)


def _decode_prompt(tokenizer, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


@torch.no_grad()
def score_rollouts(rollout: Rollout, *, reward_fn=None, reward_model: nn.Module | None = None) -> torch.Tensor:
    """[N] scores: reward_model(prompt + response) or reward_fn(prompts, completions, **extra)."""
    if (reward_fn is None) == (reward_model is None):
        raise ConfigError("give exactly one of reward_fn or reward_model")
    if reward_model is not None:
        was = reward_model.training
        reward_model.eval()
        dev = next(reward_model.parameters()).device
        r = reward_model(rollout.input_ids.to(dev), rollout.attention_mask.to(dev)).float()
        reward_model.train(was)
        return r.to(rollout.input_ids.device)
    if rollout.completion_texts is not None:
        prompts, completions = rollout.prompt_texts, rollout.completion_texts
    else:
        prompts, completions = rollout.prompt_ids, rollout.response_ids
    scores = list(reward_fn(prompts, completions, **rollout.extra))
    if len(scores) != len(rollout):
        raise ConfigError(f"the reward function returned {len(scores)} scores for {len(rollout)} completions")
    try:
        out = torch.tensor([float(s) for s in scores], dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the reward function must return numbers, got {scores[:3]!r}") from exc
    if not torch.isfinite(out).all():
        raise ConfigError("the reward function returned a NaN or infinite score")
    return out.to(rollout.input_ids.device)


def prompt_batches(prompts: Sequence[Any], batch_size: int, seed: int = 0):
    """Endless stream of prompt-index batches, reshuffled every pass."""
    import random

    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(prompts)))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch
