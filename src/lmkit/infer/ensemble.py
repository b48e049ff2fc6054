"""Output ensembles: several models that share a tokenizer, decoded as one model.

`EnsembleLM(models, weights, combine)` is a model-like wrapper: its forward runs every member
on the same tokens and combines their next-token distributions, so `generate`, beam search
and the rest of infer/ use it unchanged (it takes the eager `model.forward` path of the
decode core; each member keeps its own KV cache inside one `EnsembleCache`).

    combine="logits"    z = Σ w_i z_i / Σ w_i                 (average the raw logits)
    combine="logprobs"  z = Σ w_i log p_i / Σ w_i             (normalised product of experts)
    combine="probs"     z = log Σ w_i p_i / Σ w_i             (mixture: the classic ensemble)

For "logprobs" and "probs" the returned logits are log-probabilities (softmax of them is the
combined distribution; for "probs" exactly the weighted mixture). Temperature, top-p and the
other processors then act on the combined distribution.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.models.decoder import next_token_loss
from lmkit.models.output import ModelOutput

COMBINE_MODES = ("logits", "logprobs", "probs")


class EnsembleCache:
    """One KV cache per member, moved together (truncate, select, reset)."""

    def __init__(self, caches: Sequence) -> None:
        self.caches = list(caches)

    @property
    def seq_len(self) -> int:
        return self.caches[0].seq_len

    def reset(self) -> None:
        for c in self.caches:
            c.reset()

    def truncate(self, n: int) -> None:
        for c in self.caches:
            c.truncate(n)

    def select(self, indices) -> None:
        for c in self.caches:
            c.select(indices)

    def memory_bytes(self) -> int:
        return sum(c.memory_bytes() for c in self.caches)


def combine_logits(logits: Sequence[torch.Tensor], weights: Sequence[float], combine: str = "logits") -> torch.Tensor:
    """The members' logits [..., V] -> the ensemble's (see the module docstring)."""
    if combine not in COMBINE_MODES:
        raise ConfigError(f"combine={combine!r}: must be one of {', '.join(COMBINE_MODES)}")
    w = torch.tensor(weights, dtype=torch.float32, device=logits[0].device)
    w = (w / w.sum()).view(-1, *([1] * logits[0].dim()))
    stacked = torch.stack([z.float() for z in logits])
    if combine == "logits":
        out = (w * stacked).sum(0)
    elif combine == "logprobs":
        out = (w * torch.log_softmax(stacked, -1)).sum(0)
    else:
        out = torch.logsumexp(torch.log_softmax(stacked, -1) + torch.log(w), dim=0)
    return out.to(logits[0].dtype)


class EnsembleLM(nn.Module):
    """Decode several models as one: their next-token distributions combined at every step."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 combine: str = "probs") -> None:
        super().__init__()
        if len(models) < 1:
            raise ConfigError("an ensemble needs at least one model")
        vocab = {m.config.vocab_size for m in models}
        if len(vocab) != 1:
            raise ConfigError(f"ensemble members have vocabularies of sizes {sorted(vocab)}: they must share one "
                              "tokenizer (the same token ids mean the same text)")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"weights {weights}: one non-negative weight per model, not all 0")
        if combine not in COMBINE_MODES:
            raise ConfigError(f"combine={combine!r}: must be one of {', '.join(COMBINE_MODES)}")
        self.members = nn.ModuleList(models)
        self.weights, self.combine = weights, combine
        self.config = models[0].config
        self.generation_defaults = getattr(models[0], "generation_defaults", None)

    def make_cache(self, batch_size: int, max_len: int | None = None) -> EnsembleCache:
        return EnsembleCache([m.make_cache(batch_size, max_len) for m in self.members])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                kv_cache: EnsembleCache | None = None, num_logits_to_keep: int = 0, **kwargs) -> ModelOutput:
        caches = kv_cache.caches if kv_cache is not None else [None] * len(self.members)
        logits = [m(input_ids, attention_mask=attention_mask, position_ids=position_ids, kv_cache=c,
                    num_logits_to_keep=num_logits_to_keep, **kwargs).logits
                  for m, c in zip(self.members, caches)]
        out = combine_logits(logits, self.weights, self.combine)
        loss = next_token_loss(out, labels) if labels is not None else None
        return ModelOutput(logits=out, loss=loss, kv_cache=kv_cache)
