"""Diffusion: schedulers against `diffusers`, the UNet's shapes, guidance, and the digits loop."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.vision.ddim import DDIMSampler
from lmkit.vision.ddpm import DDPMSampler
from lmkit.vision.noise_schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction", "sample"]
T = 100


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("kind", SCHEDULES)
def test_add_noise_and_velocity_match_diffusers(kind):
    ours = NoiseSchedule(T, kind, beta_start=1e-4, beta_end=0.02)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=1e-4, beta_end=0.02)
    _close(ours.betas, ref.betas)
    x0, noise = _inputs()
    t = torch.tensor([0, T - 1])
    _close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    _close(ours.velocity(x0, noise, t), ref.get_velocity(x0, noise, t))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind", SCHEDULES)
def test_ddpm_step_matches_diffusers(kind, prediction, variance_type):
    schedule = NoiseSchedule(T, kind, prediction_type=prediction)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, prediction_type=prediction,
                                  variance_type=variance_type, clip_sample=True)
    ours = DDPMSampler(schedule, variance_type=variance_type, clip_sample=True)
    for num_steps in (None, 10):
        if num_steps:
            ref.set_timesteps(num_steps)
            ours.set_timesteps(num_steps)
        assert ours.timesteps.tolist() == ref.timesteps.tolist()
        for t in (int(ours.timesteps[0]), int(ours.timesteps[len(ours.timesteps) // 2]), int(ours.timesteps[-1])):
            sample, out = _inputs(t)
            noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(7))
            expected = ref.step(out, t, sample, generator=torch.Generator().manual_seed(7))
            got = ours.step(out, t, sample, noise=noise)
            _close(got.prev_sample, expected.prev_sample)
            _close(got.pred_original_sample, expected.pred_original_sample)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind", SCHEDULES)
def test_ddim_step_matches_diffusers(kind, prediction, spacing):
    schedule = NoiseSchedule(T, kind, prediction_type=prediction)
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=kind, prediction_type=prediction,
                                  timestep_spacing=spacing, clip_sample=True, set_alpha_to_one=False)
    ours = DDIMSampler(schedule, clip_sample=True, set_alpha_to_one=False, timestep_spacing=spacing)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    for eta, clipped in ((0.0, False), (1.0, True)):
        for t in (int(ours.timesteps[0]), int(ours.timesteps[-1])):
            sample, out = _inputs(t)
            noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
            expected = ref.step(out, t, sample, eta=eta, use_clipped_model_output=clipped, variance_noise=noise)
            got = ours.step(out, t, sample, eta=eta, use_clipped_model_output=clipped, noise=noise)
            _close(got.prev_sample, expected.prev_sample)
            _close(got.pred_original_sample, expected.pred_original_sample)


def test_bad_schedule_names_are_config_errors():
    with pytest.raises(ConfigError, match="beta_schedule"):
        NoiseSchedule(10, "quadratic")
    with pytest.raises(ConfigError, match="prediction_type"):
        NoiseSchedule(10, prediction_type="score")
    with pytest.raises(ConfigError, match="variance_type"):
        DDPMSampler(NoiseSchedule(10), variance_type="learned")
