"""Log-probabilities of the completion tokens of a sequence — the quantity DPO, PPO and GRPO compare.

For a sequence x_0..x_{T-1} the model's logits at position t predict x_{t+1}, so

    token_logps[b, t] = log softmax(logits[b, t])[x_{t+1}]        t = 0..T-2

and the log-probability of the response (the tokens with completion_mask = 1) is

    sum_logp[b]  = sum_t token_logps[b, t] * completion_mask[b, t+1]
    mean_logp[b] = sum_logp[b] / (number of response tokens)

Prompt and padding tokens never count: the policy did not choose them. Position 0 can
never be a response token (there is no logit that predicts it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmkit.train.losses import cross_entropy


@dataclass
class CompletionLogprobs:
    token_logps: torch.Tensor  # [B, T-1] log p(x_{t+1} | x_<=t), 0 where not a response token
    mask: torch.Tensor  # [B, T-1] 1.0 where x_{t+1} is a response token
    sum: torch.Tensor  # [B]
    mean: torch.Tensor  # [B]
    entropy: torch.Tensor | None = None  # [B, T-1] entropy of the next-token distribution (if asked)
    logits: torch.Tensor | None = None  # [B, T, V] (if asked)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits, [B, T] ids -> [B, T-1] log-probability of each next token (fp32)."""
    return -cross_entropy(logits, input_ids, shift=True, reduction="none")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] entropy (nats) of softmax(logits)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                      with_entropy: bool = False) -> CompletionLogprobs:
    """Summed and mean log-probability of the response tokens, from logits already computed."""
    tok = token_logprobs(logits, input_ids)
    mask = completion_mask[:, 1:].to(tok.dtype)
    tok = tok * mask
    total = tok.sum(-1)
    n = mask.sum(-1)
    ent = entropy_from_logits(logits[:, :-1]) * mask if with_entropy else None
    return CompletionLogprobs(tok, mask, total, total / n.clamp(min=1.0), ent)


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        completion_mask: torch.Tensor, *, temperature: float = 1.0,
                        with_entropy: bool = False, keep_logits: bool = False) -> CompletionLogprobs:
    """Run `model` (an lmkit decoder: ``model(ids, attention_mask=...)`` -> ``.logits``) and
    return the response log-probabilities. ``temperature`` divides the logits first (PPO/GRPO
    score samples under the distribution they were drawn from)."""
    logits = model(input_ids, attention_mask=attention_mask).logits
    if temperature != 1.0:
        logits = logits / temperature
    out = sequence_logprobs(logits, input_ids, completion_mask, with_entropy)
    if keep_logits:
        out.logits = logits
    return out
