"""Training a diffusion denoiser: draw t and noise, regress the schedule's target.

loss = || f(x_t, t, c) - target ||^2 with x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t uniform,
the target eps / v / x_0 per the schedule's `prediction_type`. The condition is dropped with
probability `cond_drop_prob` so the same network also learns the unconditional prediction that
classifier-free guidance needs. An exponential moving average of the weights (`ema_decay`) is
what gets sampled from: it smooths the noisy late-training weights and gives visibly cleaner samples.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lmkit.errors import ConfigError
from lmkit.progress import Progress
from lmkit.train.schedule import lr_factor
from lmkit.vision.guidance import drop_condition
from lmkit.vision.noise_schedule import NoiseSchedule
from lmkit.vision.unet import UNet


@dataclass
class DiffusionTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0 <= self.cond_drop_prob < 1:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def diffusion_loss(model: UNet, schedule: NoiseSchedule, x0: torch.Tensor, labels: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error of the model's prediction at uniformly drawn timesteps."""
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = schedule.add_noise(x0, noise, t)
    return F.mse_loss(model(x_t, t, labels), schedule.training_target(x0, noise, t))


def train_diffusion(model: UNet, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None,
                    config: DiffusionTrainConfig, progress: bool | str | None = None,
                    on_step: Callable[[int, float], None] | None = None) -> UNet:
    """Train `model` on `images` (N, C, H, W) in [-1, 1]; return the EMA copy of the weights."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    null = model.config.num_classes
    model.train()
    bar = Progress(total=config.steps, desc="diffusion", unit="step", progress=progress)
    for step in bar.track(range(config.steps)):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, schedule="cosine", warmup_steps=config.warmup_steps,
                                                max_steps=config.steps, min_lr_ratio=0.05)
        idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        batch_labels = None
        if labels is not None:
            batch_labels = drop_condition(labels[idx], config.cond_drop_prob, null, generator)
        loss = diffusion_loss(model, schedule, images[idx], batch_labels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step, loss.item())
    return ema
