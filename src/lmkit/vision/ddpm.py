"""DDPM ancestral sampling (Ho et al. 2020): x_{t-1} ~ q(x_{t-1} | x_t, x_0-hat).

The posterior of the forward process given x_0 is Gaussian with mean
  (sqrt(ab_{t-1}) beta_t / (1 - ab_t)) x_0 + (sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t)) x_t
and variance beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t (`fixed_small`); `fixed_large` uses
beta_t instead (the two bounds of the DDPM paper). With fewer inference steps than training
steps, "t-1" is the previous visited timestep and alpha_t becomes ab_t / ab_prev.
Matches `diffusers.DDPMScheduler.step`.
"""

from __future__ import annotations

import torch

from lmkit.errors import ConfigError
from lmkit.vision.noise_schedule import NoiseSchedule, inference_timesteps
from lmkit.vision.sampler_step import StepOutput

VARIANCE_TYPES = ("fixed_small", "fixed_large")


class DDPMSampler:
    """Reverse steps of a DDPM over `schedule`; `clip_sample` clamps x_0-hat to
    [-clip_sample_range, clip_sample_range] (images live in [-1, 1])."""

    def __init__(self, schedule: NoiseSchedule, variance_type: str = "fixed_small", clip_sample: bool = True,
                 clip_sample_range: float = 1.0) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ConfigError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        self.schedule = schedule
        self.variance_type = variance_type
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.timesteps = torch.arange(schedule.num_train_timesteps - 1, -1, -1)
        self._custom = False

    def set_timesteps(self, num_steps: int, spacing: str = "leading") -> None:
        """Visit `num_steps` of the training timesteps instead of all of them."""
        self.timesteps = inference_timesteps(self.schedule.num_train_timesteps, num_steps, spacing)
        self._custom = True

    def previous_timestep(self, t: int) -> int:
        if not self._custom:
            return t - 1
        index = int((self.timesteps == t).nonzero()[0][0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def variance(self, t: int) -> torch.Tensor:
        """Variance of the noise added going from t to the previous timestep."""
        ac = self.schedule.alphas_cumprod
        prev_t = self.previous_timestep(t)
        ab_t = ac[t]
        ab_prev = ac[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_t = 1 - ab_t / ab_prev
        if self.variance_type == "fixed_large":
            return beta_t
        return torch.clamp((1 - ab_prev) / (1 - ab_t) * beta_t, min=1e-20)

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> StepOutput:
        """One ancestral step from x_t. `noise` is the standard normal draw for the added variance
        (drawn with `generator` when not given, as `torch.randn(shape, generator=...)`)."""
        t = int(t)
        ac = self.schedule.alphas_cumprod
        prev_t = self.previous_timestep(t)
        ab_t = ac[t]
        ab_prev = ac[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        alpha_t = ab_t / ab_prev
        beta_t = 1 - alpha_t
        x0, _ = self.schedule.split_prediction(model_output, sample, t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        x0_coeff = ab_prev**0.5 * beta_t / (1 - ab_t)
        xt_coeff = alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)
        prev = x0_coeff * x0 + xt_coeff * sample
        if t > 0:
            if noise is None:
                noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype)
                noise = noise.to(model_output.device)
            prev = prev + self.variance(t) ** 0.5 * noise
        return StepOutput(prev_sample=prev, pred_original_sample=x0)
