"""The optimizer side of online RL (PPO, GRPO): which optimizer, and one clipped update.

Both trainers step a plain AdamW over `param_groups` (no weight decay on norms and biases)
once per mini-batch, clipping the gradient norm of the trainable parameters first.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.train.optim import AdamW, param_groups


def online_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `model`, decay only on the matrices."""
    return AdamW(param_groups(model, weight_decay), lr=lr)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module, max_grad_norm: float) -> None:
    """Backward `loss`, clip the trainable gradients to `max_grad_norm` (0/None: no clipping), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    opt.step()
