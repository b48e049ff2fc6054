"""Latent diffusion (Rombach et al. 2022, Stable Diffusion): diffuse in a VAE's latent space.

The autoencoder is trained first and frozen; the UNet, the noise schedule, the samplers and
classifier-free guidance are the pixel-space ones, run on z = scaling_factor * mu(x) instead of x.
The scaling factor makes the latents' standard deviation 1, so the schedule's noise levels
mean what they mean for unit-variance images: Stable Diffusion's 0.18215 is 1 / std of its
VAE's latents, and `scaling_factor_of` computes the same figure from the data. Samples are
decoded back to pixels at the end. Latents are not bounded, so x_0-hat is not clipped to
[-1, 1] while sampling (diffusers' `clip_sample=False` for latent models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmkit.vision.ddim import DDIMSampler
from lmkit.vision.ddpm import DDPMSampler
from lmkit.vision.diffusion_sampling import sample_images
from lmkit.vision.unet import UNet
from lmkit.vision.vae import VAE


@torch.no_grad()
def scaling_factor_of(vae: VAE, images: torch.Tensor, batch_size: int = 512) -> float:
    """1 / std of the latent means of `images`: the factor that gives the diffusion unit-variance latents."""
    vae.eval()
    means = torch.cat([vae.encode(images[i:i + batch_size])[0] for i in range(0, images.shape[0], batch_size)])
    return float(1.0 / means.std())


@dataclass
class LatentSpace:
    """A frozen VAE and its scaling factor: images <-> scaled latents."""

    vae: VAE
    scaling_factor: float

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Scaled latent means (N, latent_channels, H/f, W/f); the mean, not a sample, as the
        VAE's posterior variance is tiny with a small KL weight."""
        self.vae.eval()
        parts = [self.vae.encode(images[i:i + batch_size])[0] for i in range(0, images.shape[0], batch_size)]
        return torch.cat(parts) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents."""
        self.vae.eval()
        return self.vae.decode(latents / self.scaling_factor).clamp(-1, 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        f = self.vae.config.downsample_factor
        return self.vae.config.latent_channels, image_size // f, image_size // f


def latent_sampler(sampler: DDIMSampler | DDPMSampler) -> DDIMSampler | DDPMSampler:
    """`sampler` with x_0-hat clipping turned off (latents are not in [-1, 1])."""
    sampler.clip_sample = False
    return sampler


@torch.no_grad()
def sample_latent_images(model: UNet, space: LatentSpace, sampler: DDIMSampler | DDPMSampler, n: int,
                         image_size: int, labels: torch.Tensor | None = None, guidance_scale: float = 1.0,
                         eta: float = 0.0, generator: torch.Generator | None = None,
                         progress: bool | str | None = False) -> torch.Tensor:
    """`n` images (N, C, image_size, image_size) in [-1, 1]: latents sampled with the (guided)
    UNet, then decoded by the VAE."""
    latents = sample_images(model, latent_sampler(sampler), (n, *space.latent_shape(image_size)), labels,
                            guidance_scale=guidance_scale, eta=eta, generator=generator, progress=progress,
                            clamp=False)
    return space.decode(latents)
