"""Noise schedules and the forward process q(x_t | x_0) of a diffusion model.

A schedule fixes beta_t, the variance added at step t; everything else (alpha_t = 1 - beta_t,
alpha_bar_t = prod alpha_s) follows. The forward process has a closed form,
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, so training draws any t directly.
What the network predicts (eps, v or x_0) is part of the schedule because both the training
target and every sampler's step depend on it. Numbers match `diffusers` (float32 throughout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmkit.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def make_betas(kind: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_1..beta_T for a named schedule: `linear` (DDPM), `scaled_linear` (Stable Diffusion:
    linear in sqrt(beta)) or `squaredcos_cap_v2` (the cosine schedule of Nichol & Dhariwal,
    alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2), betas capped at 0.999)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), 0.999)
            for i in range(num_train_timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float32)
    raise ConfigError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {kind!r}")


def inference_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """The `num_steps` training timesteps a sampler visits, largest first. `leading` (DDIM paper)
    starts at 0 and may never reach T-1; `trailing` ends exactly at T-1 (better with few steps);
    `linspace` spreads both ends."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(f"num_steps must be in 1..{num_train_timesteps}, got {num_steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        steps = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        steps = np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].copy().astype(np.int64)
    else:
        raise ConfigError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return torch.from_numpy(steps)


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over a batch of images like `like`."""
    out = values.to(like.device, like.dtype)[t.to(like.device)].flatten()
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


@dataclass
class NoiseSchedule:
    """The forward process: betas, their cumulative products, and the network's parametrisation.

    `prediction_type`: `epsilon` (the noise), `v_prediction` (v = sqrt(ab) eps - sqrt(1-ab) x_0,
    Salimans & Ho) or `sample` (x_0 itself).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.betas = make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")}

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I) with the given noise."""
        ab = _per_sample(self.alphas_cumprod, t, x0)
        return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0, the v-prediction target."""
        ab = _per_sample(self.alphas_cumprod, t, x0)
        return ab**0.5 * noise - (1 - ab) ** 0.5 * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0

    def split_prediction(self, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted x_0, predicted eps) from the network's output at a single timestep t."""
        ab = self.alphas_cumprod[t]
        b = 1 - ab
        if self.prediction_type == "epsilon":
            x0 = (sample - b**0.5 * model_output) / ab**0.5
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - ab**0.5 * x0) / b**0.5
        else:
            x0 = ab**0.5 * sample - b**0.5 * model_output
            eps = ab**0.5 * model_output + b**0.5 * sample
        return x0, eps
