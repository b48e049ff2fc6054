"""The VAE (shapes, KL against torch.distributions, loss, training) and latent diffusion on it."""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.vision.latent_diffusion import LatentSpace, sample_latent_images, scaling_factor_of
from lmkit.vision.vae import VAE, VAEConfig, VAETrainConfig, gaussian_kl, reparameterize, train_vae, vae_loss

TINY_VAE = dict(in_channels=1, latent_channels=4, channels=(8, 8, 8), groups=4)
TINY_UNET = dict(in_channels=4, out_channels=4, base_channels=8, channel_mults=(1, 2), attention_levels=(False, True),
                 num_heads=2, groups=4, context_dim=16, num_classes=10)


def _bars(n: int = 32, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A vertical bar at column = label: images the tiny models learn in a few steps."""
    labels = torch.arange(n) % 8
    images = -torch.ones(n, 1, size, size)
    images[torch.arange(n), 0, :, labels] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def trained_vae() -> VAE:
    torch.manual_seed(0)
    images, _ = _bars()
    losses = []
    vae = train_vae(VAE(VAEConfig(**TINY_VAE)), images, VAETrainConfig(steps=12, batch_size=8, warmup_steps=2),
                    progress=False, on_step=lambda step, total, rec, kl: losses.append(total))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3, losses
    return vae


def test_vae_shapes_and_errors():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(**TINY_VAE))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4) and vae.config.downsample_factor == 4
    assert vae.decode(mean).shape == x.shape
    out = vae(x, torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == x.shape and out.mean.shape == (2, 4, 4, 4)
    with pytest.raises(ConfigError, match="divisible by 4"):
        vae.encode(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ConfigError, match="groups"):
        VAEConfig(channels=(12, 16), groups=8)
    with pytest.raises(ConfigError, match="beta"):
        VAETrainConfig(beta=-1.0)


def test_kl_and_loss_match_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mean, logvar), expected, atol=1e-5)
    assert torch.allclose(gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1))  # q = prior: 0
    # reparameterisation: the samples follow N(mean, exp(logvar)) and carry gradients to both
    m, lv = torch.tensor([1.5], requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    z = reparameterize(m.expand(20000), lv.expand(20000), torch.Generator().manual_seed(1))
    assert abs(z.mean().item() - 1.5) < 0.02 and abs(z.var().item() - torch.e ** -1) < 0.02
    z.sum().backward()
    assert m.grad is not None and lv.grad is not None
    vae = VAE(VAEConfig(**TINY_VAE))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = vae(x)
    total, rec, kl = vae_loss(out, x, beta=0.5)
    assert torch.allclose(rec, (out.reconstruction - x).pow(2).sum() / 2)
    assert torch.allclose(kl, gaussian_kl(out.mean, out.logvar).mean())
    assert torch.allclose(total, rec + 0.5 * kl)


def test_latent_round_trip_and_scaling(trained_vae):
    images, _ = _bars()
    space = LatentSpace(trained_vae, scaling_factor_of(trained_vae, images))
    latents = space.encode(images)
    assert latents.shape == (32, 4, 2, 2) and space.latent_shape(8) == (4, 2, 2)
    assert abs(latents.std().item() - 1.0) < 1e-4  # the scaling factor gives unit-variance latents
    decoded = space.decode(latents)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    # decode(encode(x)) undoes the scaling: it is the VAE's own reconstruction from the mean
    with torch.no_grad():
        assert torch.allclose(decoded, trained_vae.decode(trained_vae.encode(images)[0]).clamp(-1, 1), atol=1e-5)


def test_latent_diffusion_trains_samples_and_round_trips(trained_vae, tmp_path):
    from lmkit.vision.ddim import DDIMSampler
    from lmkit.vision.diffusion_checkpoint import load_diffusion, load_latent_space, save_diffusion
    from lmkit.vision.diffusion_training import DiffusionTrainConfig, train_diffusion
    from lmkit.vision.noise_schedule import NoiseSchedule
    from lmkit.vision.unet import UNet, UNetConfig

    torch.manual_seed(0)
    images, labels = _bars()
    space = LatentSpace(trained_vae, scaling_factor_of(trained_vae, images))
    schedule = NoiseSchedule(1000)
    unet = UNet(UNetConfig(**TINY_UNET))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    ema = train_diffusion(unet, schedule, space.encode(images), labels,
                          DiffusionTrainConfig(steps=2, batch_size=8, warmup_steps=1), progress=False)
    assert any(not torch.equal(before[k], v) for k, v in unet.state_dict().items())  # one step moved the weights
    save_diffusion(tmp_path / "m", ema, schedule, 8, latent_space=space)
    loaded, _, size = load_diffusion(tmp_path / "m")
    space2 = load_latent_space(tmp_path / "m")
    assert size == 8 and space2 is not None and space2.scaling_factor == space.scaling_factor
    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(2)
    args = (3, 8, torch.tensor([0, 1, 2]))
    out = sample_latent_images(loaded, space2, sampler, *args, guidance_scale=2.0,
                               generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8) and out.abs().max() <= 1
    assert not sampler.clip_sample  # latents are not clipped to [-1, 1]
    save_diffusion(tmp_path / "pixel", ema, schedule, 8)
    assert load_latent_space(tmp_path / "pixel") is None


def test_cli_latent_train_and_sample(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from lmkit.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["diffusion", "train", "--latent", "--image-size", "8", "--out", str(tmp_path / "m"),
                              "--steps", "1", "--batch-size", "4", "--base-channels", "8", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "scaling factor" in res.output and (tmp_path / "m" / "vae.safetensors").is_file()
    res = runner.invoke(cli, ["diffusion", "sample", str(tmp_path / "m"), "--out", str(tmp_path / "g.png"),
                              "--digits", "3", "--per-digit", "2", "--steps", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "g.png").size == ((2 * 9 + 1) * 4, (1 * 9 + 1) * 4)
    res = runner.invoke(cli, ["diffusion", "train", "--latent", "--image-size", "10", "--out", str(tmp_path / "x"),
                              "--steps", "1", "--quiet"])
    assert res.exit_code != 0 and "divisible by 4" in res.output
