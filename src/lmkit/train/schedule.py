"""Learning-rate schedules: linear warm-up, then cosine / linear decay or a constant.

factor(step) multiplies the peak lr:
  warm-up   step < W:   step / W   (as Hugging Face's schedules: with W > 0 the first
            update uses lr 0, so the run really starts small)
  cosine    m + (1 - m) * 0.5 * (1 + cos(pi * p)),   p = (step - W) / (T - W) in [0, 1]
  linear    m + (1 - m) * (1 - p)
  constant  1
with m = min_lr_ratio. Warm-up exists because Adam's second-moment estimate is noisy in
the first steps (few gradients seen), so full-size updates early can blow the model up.
Cosine decays slowly at first and last, spending most steps at a moderate lr.
"""

from __future__ import annotations

import math

import torch

from lmkit.errors import ConfigError


def lr_factor(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    max_steps: int,
    min_lr_ratio: float = 0.0,
) -> float:
    """The multiplier of the peak learning rate for the update number `step` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    raise ConfigError(f"unknown schedule {schedule!r}; choose cosine, linear or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_factor` for a TrainConfig; its state_dict is just the step count."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            schedule=config.schedule,
            warmup_steps=config.warmup_steps,
            max_steps=config.max_steps,
            min_lr_ratio=config.min_lr_ratio,
        ),
    )
