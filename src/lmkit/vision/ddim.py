"""DDIM sampling (Song et al. 2021): a non-Markovian reverse process with the same marginals.

x_{t'} = sqrt(ab_{t'}) x_0-hat + sqrt(1 - ab_{t'} - sigma^2) eps-hat + sigma z, with
sigma = eta * sqrt((1 - ab_{t'}) / (1 - ab_t) * (1 - ab_t / ab_{t'})). eta = 0 is deterministic
(an ODE solver, so few steps suffice); eta = 1 is DDPM's fixed_small variance.
Matches `diffusers.DDIMScheduler.step` (including its prev = t - T // n rule).
"""

from __future__ import annotations

import torch

from lmkit.vision.noise_schedule import NoiseSchedule, inference_timesteps
from lmkit.vision.sampler_step import StepOutput


class DDIMSampler:
    """DDIM steps over `schedule`. `set_alpha_to_one`: the last step goes to ab = 1 (a clean
    image) rather than ab_0."""

    def __init__(self, schedule: NoiseSchedule, clip_sample: bool = True, clip_sample_range: float = 1.0,
                 set_alpha_to_one: bool = True, timestep_spacing: str = "leading", steps_offset: int = 0) -> None:
        self.schedule = schedule
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else schedule.alphas_cumprod[0]
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.set_timesteps(50 if schedule.num_train_timesteps >= 50 else schedule.num_train_timesteps)

    def set_timesteps(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.timesteps = inference_timesteps(self.schedule.num_train_timesteps, num_steps, self.timestep_spacing,
                                             self.steps_offset)

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> StepOutput:
        """One DDIM step from x_t to the previous visited timestep."""
        t = int(t)
        ac = self.schedule.alphas_cumprod
        prev_t = t - self.schedule.num_train_timesteps // self.num_steps
        ab_t = ac[t]
        ab_prev = ac[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = self.schedule.split_prediction(model_output, sample, t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        variance = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        std = eta * variance**0.5
        if use_clipped_model_output:
            eps = (sample - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5
        prev = ab_prev**0.5 * x0 + (1 - ab_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype)
                noise = noise.to(model_output.device)
            prev = prev + std * noise
        return StepOutput(prev_sample=prev, pred_original_sample=x0)
