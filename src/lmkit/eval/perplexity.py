"""Perplexity of a causal LM over a long text: the sliding-window recipe, plus bits per byte/char.

A model with context `max_length` cannot see the whole text at once. The standard recipe
(Hugging Face "Perplexity of fixed-length models") moves a window of `max_length` tokens
forward by `stride` tokens; each window scores only the tokens it adds (those after the
previous window's end), all earlier tokens in the window serving as context:

    for begin in 0, stride, 2*stride, ...:
        end = min(begin + max_length, N);  new = end - prev_end
        score tokens [end - new, end) given tokens [begin, that token)

stride == max_length gives disjoint chunks (fast, pessimistic: tokens early in a chunk see
little context); a small stride gives each token nearly max_length - stride tokens of
context, at N / stride forward passes. The first token of the text has no context and is
never scored (nor, with stride == max_length, the first token of each chunk), as in the
recipe; pass a BOS token in front (`text_perplexity(bos_id=...)`) to score the first one.

We sum the exact per-token log-probabilities. (HF's snippet multiplies each window's mean
loss by `valid - batch_size` tokens, which is one token short for every window after the
first when stride < max_length: there the first scored label is not at position 0 and the
shift drops nothing.)

Perplexity = exp(NLL / tokens) depends on the tokenizer; bits per byte = NLL / ln 2 / UTF-8
bytes of the text (and bits per character likewise) do not, so models with different
tokenizers can be compared on them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from lmkit.errors import ConfigError
from lmkit.train.losses import cross_entropy


@dataclass
class PerplexityReport:
    nll: float  # total negative log-likelihood, nats
    n_tokens: int  # scored tokens
    perplexity: float
    mean_nll: float
    bits_per_token: float
    n_windows: int
    max_length: int
    stride: int
    n_bytes: int | None = None
    n_chars: int | None = None
    bits_per_byte: float | None = None
    bits_per_char: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def sliding_window_nll(model, input_ids: Sequence[int] | torch.Tensor, max_length: int | None = None,
                       stride: int | None = None) -> tuple[float, int, int]:
    """(total NLL in nats, scored tokens, windows) of one token sequence."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    n = ids.numel()
    if n < 2:
        raise ConfigError(f"perplexity needs at least 2 tokens (the first is never scored), got {n}")
    if max_length is None:
        max_length = int(getattr(getattr(model, "config", None), "max_seq_len", 0) or 1024)
    stride = max_length if stride is None else stride
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be in [1, max_length={max_length}], got {stride}")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit and max_length > limit and getattr(model.config, "position", "") in ("learned",):
        raise ConfigError(f"max_length={max_length} exceeds the model's context of {limit} tokens")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    nll, count, windows, prev_end = 0.0, 0, 0, 0
    try:
        for begin in range(0, n, stride):
            end = min(begin + max_length, n)
            new = end - prev_end
            window = ids[begin:end].to(device)[None]
            logits = model(window).logits[0].float()
            tok_lp = -cross_entropy(logits, window[0], shift=True, reduction="none")  # log p(window[j] | ...), j >= 1
            first = max(window.shape[1] - new, 1)
            nll -= float(tok_lp[first - 1:].double().sum())
            count += window.shape[1] - first
            windows += 1
            prev_end = end
            if end == n:
                break
    finally:
        model.train(was_training)
    return nll, count, windows


def perplexity(model, input_ids: Sequence[int] | torch.Tensor, max_length: int | None = None,
               stride: int | None = None, text: str | None = None) -> PerplexityReport:
    """Sliding-window perplexity; pass the original `text` to also get bits per byte/char."""
    nll, count, windows = sliding_window_nll(model, input_ids, max_length, stride)
    if max_length is None:
        max_length = int(getattr(getattr(model, "config", None), "max_seq_len", 0) or 1024)
    mean = nll / count
    rep = PerplexityReport(nll, count, math.exp(mean) if mean < 700 else float("inf"), mean, mean / math.log(2),
                           windows, max_length, stride if stride is not None else max_length)
    if text is not None:
        rep.n_bytes = len(text.encode("utf-8"))
        rep.n_chars = len(text)
        rep.bits_per_byte = nll / math.log(2) / max(rep.n_bytes, 1)
        rep.bits_per_char = nll / math.log(2) / max(rep.n_chars, 1)
    return rep


def text_perplexity(model, tokenizer, text: str, max_length: int | None = None, stride: int | None = None,
                    bos_id: int | None = None) -> PerplexityReport:
    """Tokenize `text` (optionally prepending `bos_id`, which makes the first token scored too)."""
    if not text:
        raise ConfigError("the text to evaluate is empty")
    ids = list(tokenizer.encode(text))
    if bos_id is not None:
        ids = [bos_id] + ids
    return perplexity(model, ids, max_length, stride, text=text)
