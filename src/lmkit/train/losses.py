"""Token cross-entropy with label smoothing, written out.

loss_i = -(1 - eps) * log p(y_i) - eps * mean_v log p(v)

Label smoothing (Szegedy et al. 2016) trains towards the target distribution
(1 - eps) * onehot(y) + eps / V: the model is never pushed to put probability 1 on a
token, which keeps logits bounded and calibrates confidence. Positions whose label is
`ignore_index` (-100: padding, prompt tokens in SFT) count neither in the sum nor in the
number of tokens the mean divides by.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def shift_for_causal_lm(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: drop the last logit and the first label."""
    return logits[..., :-1, :], labels[..., 1:]


def count_targets(labels: torch.Tensor, shift: bool = True, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions contribute to the loss (after the causal shift if `shift`)."""
    if shift:
        labels = labels[..., 1:]
    return int((labels != ignore_index).sum())


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    shift: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of logits [..., V] against labels [...].

    reduction: "mean" over counted tokens (0 if there are none), "sum", or "none" (per
    position, 0 where ignored). `shift=True` applies the causal-LM shift first.
    The log-softmax is computed in fp32 whatever the logits' dtype.
    """
    if shift:
        logits, labels = shift_for_causal_lm(logits, labels)
    vocab = logits.shape[-1]
    shape = labels.shape
    logp = torch.log_softmax(logits.reshape(-1, vocab).float(), dim=-1)
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    safe = labels.masked_fill(~keep, 0)
    nll = -logp.gather(1, safe[:, None]).squeeze(1)
    if label_smoothing > 0:
        smooth = -logp.mean(dim=-1)
        per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    else:
        per_token = nll
    per_token = per_token * keep
    if reduction == "none":
        return per_token.view(shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / keep.sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}: must be 'mean', 'sum' or 'none'")
