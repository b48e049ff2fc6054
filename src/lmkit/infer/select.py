"""Choosing the next tokens: the one selection step every decoding loop shares.

    logits [B, V] -> allowed-token mask -> processors and warpers (sampling.py)
                  -> argmax, or a multinomial draw from the softmax -> tokens [B]
                  (+ the chosen tokens' log-probabilities, + the top alternatives)

`generate`, the serving engine and speculative decoding's drafting all call
`select_tokens` (as nanochat's `sample_next_token` serves its naive generate and its
engine), so a new decoding feature is written once. `vocab_limit` (the tokenizer's size)
keeps padding rows of the output, which no tokenizer id maps to, from ever being chosen
(vocab_padding.py). Log-probabilities are those of the
*processed* distribution (OpenAI's semantics): the scores the token was chosen from.

The optional `allowed` mask [B, V] (True = may be chosen) is applied before the processors,
so warpers such as top-k and top-p only ever keep allowed tokens: it serves vocabulary
padding (lm_head columns no tokenizer id maps to) and structured output. Every row must
allow at least one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmkit.infer.sampling import NEG_INF, LogitsProcessorList
from lmkit.infer.vocab_padding import mask_unrenderable


@dataclass
class Selection:
    """The tokens chosen for a batch of rows, and what they were chosen from.

    tokens [B]; scores [B, V] the processed scores (float32); probs [B, V] their softmax
    when sampled (else None); logprobs [B] and top_logprobs (values [B, k], ids [B, k]) when asked.
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None


def select_tokens(
    logits: torch.Tensor,
    *,
    history: torch.Tensor | None = None,
    processors: LogitsProcessorList | None = None,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
    vocab_limit: int | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> Selection:
    """Choose one token per row of `logits` [B, V].

    history [B, T]: the tokens so far (prompt left-padded with NO_TOKEN), read by the
    processors; processors: penalties and (when sampling) warpers, in order; do_sample:
    draw from the softmax with `generator` (None: torch's global RNG), else argmax;
    allowed [B, V] bool: only these ids may be chosen; vocab_limit: ids >= it are never
    chosen (the rows beyond the tokenizer's vocabulary); logprobs / top_logprobs: also
    return the chosen tokens' log-probabilities / the `top_logprobs` most likely ids.
    """
    scores = mask_unrenderable(logits.float(), vocab_limit)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, NEG_INF)
    if processors:
        scores = processors(history, scores)
    probs = None
    if do_sample:
        probs = torch.softmax(scores, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    else:
        tokens = scores.argmax(dim=-1)
    sel = Selection(tokens, scores, probs)
    if logprobs or top_logprobs:
        sel.logprobs, sel.top_logprobs = token_logprobs(scores, tokens, top_logprobs)
    return sel


def token_logprobs(scores: torch.Tensor, tokens: torch.Tensor, top: int = 0
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """scores [B, V], tokens [B] -> (log-probabilities [B] of the tokens, top-`top` (values, ids) or None)."""
    lsm = torch.log_softmax(scores, dim=-1)
    chosen = lsm.gather(1, tokens[:, None]).squeeze(1)
    if not top:
        return chosen, None
    values, ids = torch.topk(lsm, min(top, lsm.shape[-1]), dim=-1)
    return chosen, (values, ids)


def make_generator(config, device: torch.device) -> torch.Generator | None:
    """A private RNG for `config.seed` (same seed, same inputs -> same output); None uses torch's global RNG."""
    if config.seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    return gen
