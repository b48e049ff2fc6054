"""A small convolutional variational autoencoder: the latent space of latent diffusion.

Encoder: conv stem, then one stride-2 conv per extra entry of `channels` (each halves the
resolution), each followed by a residual conv block; a 1x1 conv gives 2 * `latent_channels`
maps, the mean and log-variance of q(z | x) = N(mu, diag(sigma^2)). Decoder: the mirror, with
nearest upsampling + conv. Training draws z = mu + sigma * eps (the reparameterisation trick,
so gradients flow through mu and sigma) and minimises

    reconstruction + beta * KL(q(z | x) || N(0, I)),   KL = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)

(a Gaussian decoder with fixed variance: the reconstruction term is the squared error, summed
over pixels; both terms are averaged over the batch). beta = 1 is the ELBO; Stable Diffusion's
autoencoder uses a tiny beta so latents keep the detail, and rescales them by a scaling factor
before diffusion (see `latent_diffusion.py`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.progress import Progress
from lmkit.train.schedule import lr_factor


@dataclass
class VAEConfig:
    """`channels[i]`: width at resolution level i; len(channels) - 1 halvings (4x down with 3 levels)."""

    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    groups: int = 8

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or self.latent_channels < 1 or self.in_channels < 1:
            raise ConfigError("VAEConfig needs at least one entry in channels and latent/in channels >= 1")
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ConfigError(f"every entry of channels must be divisible by groups={self.groups}, got {bad}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class _ResConv(nn.Module):
    """x + conv(SiLU(GroupNorm(conv(SiLU(GroupNorm(x))))))."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass
class VAEOutput:
    reconstruction: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """encode(x) -> (mean, logvar) at 1/`downsample_factor` resolution; decode(z) -> x-hat."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1), _ResConv(ch[0], cfg.groups)]
        for prev, cur in zip(ch, ch[1:]):
            enc += [nn.Conv2d(prev, cur, 3, stride=2, padding=1), _ResConv(cur, cfg.groups)]
        enc += [nn.GroupNorm(cfg.groups, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1), _ResConv(ch[-1], cfg.groups)]
        for cur, nxt in zip(reversed(ch), list(reversed(ch))[1:]):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(cur, nxt, 3, padding=1),
                    _ResConv(nxt, cfg.groups)]
        dec += [nn.GroupNorm(cfg.groups, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.config.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ConfigError(f"image size {tuple(x.shape[-2:])} must be divisible by {f} (the VAE's downsampling)")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mean, logvar = self.encode(x)
        return VAEOutput(self.decode(reparameterize(mean, logvar, generator)), mean, logvar)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample whose gradient reaches mu and sigma."""
    eps = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per sample, summed over all latent entries."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def vae_loss(out: VAEOutput, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, reconstruction, KL), each averaged over the batch; total = rec + beta * KL."""
    rec = (out.reconstruction - x).pow(2).flatten(1).sum(1).mean()
    kl = gaussian_kl(out.mean, out.logvar).mean()
    return rec + beta * kl, rec, kl


@dataclass
class VAETrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    beta: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")


def train_vae(model: VAE, images: torch.Tensor, config: VAETrainConfig, progress: bool | str | None = None,
              on_step: Callable[[int, float, float, float], None] | None = None) -> VAE:
    """Train on `images` (N, C, H, W) in [-1, 1] (AdamW, warm-up + cosine lr); returns `model` in eval mode.
    `on_step(step, total, reconstruction, kl)` sees every step's losses."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    model.train()
    bar = Progress(total=config.steps, desc="vae", unit="step", progress=progress)
    for step in bar.track(range(config.steps)):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, schedule="cosine", warmup_steps=config.warmup_steps,
                                                max_steps=config.steps, min_lr_ratio=0.05)
        idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        x = images[idx]
        total, rec, kl = vae_loss(model(x, generator), x, config.beta)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(rec=f"{rec.item():.3f}", kl=f"{kl.item():.1f}")
        if on_step is not None:
            on_step(step, total.item(), rec.item(), kl.item())
    return model.eval()
