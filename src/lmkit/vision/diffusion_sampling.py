"""Generating images: start from pure noise and apply a sampler's reverse steps with the
(classifier-free guided) denoiser."""

from __future__ import annotations

import torch

from lmkit.progress import Progress
from lmkit.vision.ddim import DDIMSampler
from lmkit.vision.ddpm import DDPMSampler
from lmkit.vision.guidance import guided_prediction
from lmkit.vision.unet import UNet


@torch.no_grad()
def sample_images(model: UNet, sampler: DDIMSampler | DDPMSampler, shape: tuple[int, ...],
                  labels: torch.Tensor | None = None, guidance_scale: float = 1.0, eta: float = 0.0,
                  generator: torch.Generator | None = None, progress: bool | str | None = False,
                  clamp: bool = True) -> torch.Tensor:
    """Images of `shape` (N, C, H, W) in [-1, 1] along `sampler.timesteps`; with `labels`,
    guided by `guidance_scale` against the model's null label. `clamp=False` returns the last
    sample unclamped (latents of latent diffusion are not in [-1, 1])."""
    model.eval()
    x = torch.randn(shape, generator=generator)
    null = model.null_labels(shape[0]) if labels is not None else None
    steps = sampler.timesteps.tolist()
    for t in Progress(total=len(steps), desc="sampling", unit="step", progress=progress).track(steps):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        if labels is None:
            out = model(x, t_batch)
        else:
            out = guided_prediction(model, x, t_batch, labels, null, guidance_scale)
        if isinstance(sampler, DDIMSampler):
            x = sampler.step(out, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = sampler.step(out, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1) if clamp else x
