"""Prompts as token ids for editing: where the subject ends, the target's ids, right-padded batches.

An edit acts at the subject's *last token* (ROME's site), so every prompt is tokenised together with
the position of that token. Targets are scored as the continuation " " + target, so a prompt never
ends in a space (byte-level BPE glues the space to the next word).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmkit.errors import ConfigError


@dataclass(frozen=True)
class SubjectPrompt:
    ids: list[int]
    subject_last: int  # index of the subject's last token in ids
    subject_first: int  # index of its first token


def encode_subject_prompt(tokenizer, template: str, subject: str, prefix: str = "") -> SubjectPrompt:
    """`template` ({} = subject) after an optional `prefix` sentence, and the subject's last token."""
    if template.count("{}") != 1:
        raise ConfigError(f"an edit prompt needs exactly one {{}} for the subject, got {template!r}")
    head = template[: template.index("{}")]
    text = (prefix + " " if prefix else "") + template.format(subject)
    upto = (prefix + " " if prefix else "") + head + subject
    n = len(tokenizer.encode(upto))
    ids = tokenizer.encode(text)
    if n == 0 or ids[:n] != tokenizer.encode(upto):
        raise ConfigError(f"the subject {subject!r} does not end on a token boundary in {text!r}")
    before = ((prefix + " " if prefix else "") + head).rstrip()
    return SubjectPrompt(ids, n - 1, len(tokenizer.encode(before)) if before else 0)


def target_ids(tokenizer, target: str) -> list[int]:
    """The token ids of `target` as it continues a prompt (with its leading space)."""
    ids = tokenizer.encode(" " + target.strip())
    if not ids:
        raise ConfigError("an edit target must not be empty")
    return ids


def pad_right(seqs: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """[B, T] ids, each row padded after its end: with causal attention the padding is never seen."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)


def target_logprobs(logits: torch.Tensor, prompt_lens: list[int], targets: list[list[int]]) -> torch.Tensor:
    """Mean log-probability per token of each row's target, which follows its prompt of
    `prompt_lens[i]` tokens in the batch whose `logits` are [B, T, V] -> [B]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    out = []
    for i, (n, tgt) in enumerate(zip(prompt_lens, targets)):
        pos = torch.arange(n - 1, n - 1 + len(tgt), device=logits.device)
        out.append(logp[i, pos, torch.tensor(tgt, device=logits.device)].mean())
    return torch.stack(out)


@torch.no_grad()
def score_targets(model, tokenizer, prompts: list[str], targets: list[str], batch_size: int = 64) -> torch.Tensor:
    """Mean log-probability per token of `targets[i]` after `prompts[i]` -> [N] (CounterFact's score)."""
    out = []
    for lo in range(0, len(prompts), batch_size):
        ps = [tokenizer.encode(p) for p in prompts[lo: lo + batch_size]]
        ts = [target_ids(tokenizer, t) for t in targets[lo: lo + batch_size]]
        logits = model(pad_right([p + t for p, t in zip(ps, ts)])).logits
        out.append(target_logprobs(logits, [len(p) for p in ps], ts))
    return torch.cat(out) if out else torch.zeros(0)
