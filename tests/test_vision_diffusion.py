"""Diffusion: schedulers against `diffusers`, the UNet's shapes, guidance, and the digits loop."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.vision.ddim import DDIMSampler
from lmkit.vision.ddpm import DDPMSampler
from lmkit.vision.noise_schedule import NoiseSchedule

# the scheduler modules directly: `import diffusers` alone costs seconds more (its lazy top-level)
DDPMScheduler = pytest.importorskip("diffusers.schedulers.scheduling_ddpm").DDPMScheduler
DDIMScheduler = pytest.importorskip("diffusers.schedulers.scheduling_ddim").DDIMScheduler

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
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=1e-4, beta_end=0.02)
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
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, prediction_type=prediction,
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
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule=kind, prediction_type=prediction,
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


# ---- UNet, guidance, training loop, CLI -------------------------------------------------------

from lmkit.vision.guidance import drop_condition, guided_prediction  # noqa: E402
from lmkit.vision.unet import UNet, UNetConfig  # noqa: E402

TINY = dict(base_channels=8, channel_mults=(1, 2), attention_levels=(False, True), num_heads=2, groups=4,
            context_dim=16, num_classes=10)


@pytest.fixture(scope="module")
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY))
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # zero-initialised otherwise: outputs all 0
    return model.eval()


def test_unet_shapes_and_conditioning(tiny_unet):
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 10, 999])
    labels = torch.tensor([1, 2, 10])
    out = tiny_unet(x, t, labels)
    assert out.shape == x.shape
    assert not torch.allclose(out, tiny_unet(x, t, torch.tensor([3, 4, 10])))  # labels matter
    assert not torch.allclose(out, tiny_unet(x, torch.tensor([5, 50, 500]), labels))  # time matters
    text = torch.randn(3, 5, 16)  # e.g. text-encoder states, read by cross-attention
    assert tiny_unet(x, t, labels, context=text).shape == x.shape
    assert tiny_unet(x, t, context=text).shape == x.shape
    with pytest.raises(ConfigError, match="divisible"):
        tiny_unet(torch.randn(1, 1, 7, 7), t[:1])
    with pytest.raises(ConfigError, match="attention_levels"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(True,))


def test_classifier_free_guidance(tiny_unet):
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([100, 100])
    labels, null = torch.tensor([3, 7]), tiny_unet.null_labels(2)
    cond, uncond = tiny_unet(x, t, labels), tiny_unet(x, t, null)
    got = guided_prediction(tiny_unet, x, t, labels, null, 4.0)
    assert torch.allclose(got, uncond + 4.0 * (cond - uncond), atol=1e-5)
    assert torch.equal(guided_prediction(tiny_unet, x, t, labels, null, 1.0), cond)
    dropped = drop_condition(torch.zeros(10000, dtype=torch.long), 0.2, 10, torch.Generator().manual_seed(0))
    assert 0.18 < (dropped == 10).float().mean() < 0.22 and set(dropped.tolist()) == {0, 10}


def test_training_lowers_the_loss_and_round_trips(tmp_path):
    from lmkit.vision.ddim import DDIMSampler
    from lmkit.vision.diffusion_checkpoint import load_diffusion, save_diffusion
    from lmkit.vision.diffusion_sampling import sample_images
    from lmkit.vision.diffusion_training import DiffusionTrainConfig, diffusion_loss, train_diffusion

    torch.manual_seed(0)  # a vertical bar at column = label: learnable in a few steps, no sklearn import
    labels = torch.arange(64) % 8
    images = -torch.ones(64, 1, 8, 8)
    images[torch.arange(64), 0, :, labels] = 1.0
    schedule = NoiseSchedule(1000, "squaredcos_cap_v2", prediction_type="v_prediction")
    model = UNet(UNetConfig(**TINY))
    losses = []
    ema = train_diffusion(model, schedule, images, labels, DiffusionTrainConfig(steps=25, batch_size=16, warmup_steps=2),
                          progress=False, on_step=lambda step, loss: losses.append(loss))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3, losses
    save_diffusion(tmp_path / "m", ema, schedule, 8)
    loaded, schedule2, size = load_diffusion(tmp_path / "m")
    assert size == 8 and schedule2.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    assert torch.equal(diffusion_loss(loaded, schedule2, images[:8], labels[:8], g),
                       diffusion_loss(ema, schedule, images[:8], labels[:8], torch.Generator().manual_seed(0)))
    sampler = DDIMSampler(schedule2)
    sampler.set_timesteps(3)
    out = sample_images(loaded, sampler, (4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), guidance_scale=2.0)
    assert out.shape == (4, 1, 8, 8) and out.abs().max() <= 1


def test_cli_train_and_sample_write_png_grids(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from lmkit.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["diffusion", "train", "--out", str(tmp_path / "m"), "--steps", "2", "--batch-size", "8",
                              "--base-channels", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["diffusion", "sample", str(tmp_path / "m"), "--out", str(tmp_path / "g.png"),
                              "--digits", "3,4", "--per-digit", "5", "--steps", "2", "--sampler", "ddpm", "--quiet"])
    assert res.exit_code == 0, res.output
    grid = Image.open(tmp_path / "g.png")
    assert grid.mode == "L" and grid.size == ((5 * 9 + 1) * 4, (2 * 9 + 1) * 4)
    res = runner.invoke(cli, ["diffusion", "sample", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert res.exit_code != 0 and "not a diffusion model directory" in res.output


def test_conditional_dcgan_trains_and_samples_per_label():
    from lmkit.vision.gan import Discriminator, GANConfig, sample_gan, train_gan

    cfg = GANConfig(steps=3, batch_size=8, width=32)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    labels = torch.arange(16) % 10
    generator = train_gan(images, labels, cfg, progress=False)
    out = sample_gan(generator, torch.tensor([0, 9]), torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8) and out.abs().max() <= 1
    assert Discriminator(cfg)(out, torch.tensor([0, 9])).shape == (2,)
    with pytest.raises(ConfigError, match="power of two"):
        GANConfig(image_size=12)
