"""Vocabulary padding: rows of the model's output that no tokenizer id maps to.

Checkpoints often give the embedding and lm_head more rows than the tokenizer has ids, so
the matrix shapes divide nicely (Qwen2: 151,936 rows for a 151,665-token tokenizer). Such a
row can still win the argmax or a draw, and the tokenizer cannot render it: the reply would
fail to decode. Whenever a model is used with its tokenizer, the decode core (`generate`,
beam search, speculative decoding, the serving engine) sets the scores of those ids to -inf
before choosing, so they are never produced.
"""

from __future__ import annotations

import torch

from lmkit.infer.sampling import NEG_INF


def renderable_size(tokenizer) -> int | None:
    """How many ids (0 .. n-1) `tokenizer` can render, or None without a tokenizer (nothing to mask)."""
    if tokenizer is None:
        return None
    try:
        n = len(tokenizer)
    except TypeError:
        n = getattr(tokenizer, "vocab_size", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def mask_unrenderable(scores: torch.Tensor, limit: int | None) -> torch.Tensor:
    """scores [..., V] with the ids >= `limit` at -inf (a new tensor; `scores` is not changed).

    The same tensor comes back when there is nothing to mask (no limit, or V <= limit).
    """
    if limit is None or limit >= scores.shape[-1]:
        return scores
    out = scores.clone()
    out[..., limit:] = NEG_INF
    return out

