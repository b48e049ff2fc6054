"""Generalised advantage estimation (Schulman et al. 2016) and advantage whitening.

Per response token t (an "action"), with reward r_t, value estimate V_t and mask m_t
(1 on the response, 0 on prompt/padding):

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
    A_t     = delta_t + gamma * lambda * A_{t+1} * m_{t+1}          (A beyond the end = 0)
    R_t     = A_t + V_t          (the value target, "returns")

lambda = 1 gives Monte-Carlo returns minus the baseline (high variance); lambda = 0 the
one-step TD error (biased by V). In RLHF gamma = 1 is usual (the episode is one response).
Whitening rescales the advantages of a batch to mean 0, variance 1 over the real tokens,
which keeps the policy-gradient step size independent of the reward scale.
"""

from __future__ import annotations

import torch


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards, values, mask [B, T] -> (advantages, returns) [B, T], zero where mask is 0."""
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape")
    mask = mask.to(values.dtype)
    t_len = rewards.shape[1]
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    next_mask = torch.zeros_like(values[:, 0])
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_adv = delta + gamma * lam * next_adv * next_mask
        adv[:, t] = next_adv
        next_value, next_mask = values[:, t], mask[:, t]
    adv = adv * mask
    return adv, (adv + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked elements (mean kept when shift_mean=False); 0 off the mask."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)
