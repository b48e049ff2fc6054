"""Latent diffusion on the scikit-learn digits, judged like the pixel model (bench_diffusion_digits.py).

Trains the small VAE (vision/vae.py) on the digits upsampled to 16x16 (latents: 4 channels at
4x4), computes the scaling factor (1 / std of the latents), trains the class-conditional UNet
with classifier-free guidance on the scaled latents, samples 100 images per digit (DDPM 100
steps, w = 2, decoded by the VAE) and reports per digit the fraction that the logistic-regression
classifier of real digits reads as the intended digit. One thread, as on the 2-core CI machine.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 bench/bench_latent_diffusion_digits.py [--steps 2000] [--vae-steps 800]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lmkit.vision.ddim import DDIMSampler
from lmkit.vision.ddpm import DDPMSampler
from lmkit.vision.diffusion_checkpoint import save_diffusion
from lmkit.vision.diffusion_training import DiffusionTrainConfig, train_diffusion
from lmkit.vision.digits import (digit_classifier, first_of_each_digit, judge_digit_samples, load_digit_images,
                                 to_digit_pixels)
from lmkit.vision.image_grid import save_image_grid
from lmkit.vision.latent_diffusion import LatentSpace, sample_latent_images, scaling_factor_of
from lmkit.vision.noise_schedule import NoiseSchedule
from lmkit.vision.unet import UNet, UNetConfig
from lmkit.vision.vae import VAE, VAEConfig, VAETrainConfig, train_vae


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--vae-channels", default="16,32,32")
    ap.add_argument("--beta", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddpm")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--per-digit", type=int, default=100)
    ap.add_argument("--out", default="bench/data/latent_diffusion_digits")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.out)
    images, labels = load_digit_images(args.image_size)
    clf, real_acc = digit_classifier()

    start = time.time()
    vae = train_vae(VAE(VAEConfig(channels=tuple(int(c) for c in args.vae_channels.split(",")))), images,
                    VAETrainConfig(steps=args.vae_steps, beta=args.beta))
    vae_s = time.time() - start
    space = LatentSpace(vae, scaling_factor_of(vae, images))
    latents = space.encode(images)
    recon = space.decode(latents)
    recon_acc = float((torch.tensor(clf.predict(to_digit_pixels(recon).numpy())) == labels).float().mean())

    schedule = NoiseSchedule(1000, "linear", prediction_type="epsilon")
    config = UNetConfig(in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
                        num_classes=10, base_channels=args.base_channels, channel_mults=(1, 2),
                        attention_levels=(False, True), num_heads=4)
    start = time.time()
    ema = train_diffusion(UNet(config), schedule, latents, labels, DiffusionTrainConfig(steps=args.steps))
    unet_s = time.time() - start
    save_diffusion(out / "model", ema, schedule, args.image_size, latent_space=space)

    sampler = DDIMSampler(schedule, timestep_spacing="trailing") if args.sampler == "ddim" else DDPMSampler(schedule)
    sampler.set_timesteps(args.sample_steps)
    wanted = torch.arange(10).repeat_interleave(args.per_digit)
    start = time.time()
    samples = sample_latent_images(ema, space, sampler, len(wanted), args.image_size, wanted,
                                   guidance_scale=args.guidance, generator=torch.Generator().manual_seed(1))
    sample_s = time.time() - start
    per_digit = judge_digit_samples(samples, wanted, clf)
    save_image_grid(samples[first_of_each_digit(wanted)], out / "samples.png", nrow=10, scale=2)
    result = {"image_size": args.image_size, "latent_shape": list(space.latent_shape(args.image_size)),
              "vae_params": sum(p.numel() for p in vae.parameters()), "vae_steps": args.vae_steps,
              "beta": args.beta, "scaling_factor": round(space.scaling_factor, 4),
              "vae_reconstruction_mse_per_pixel": round(float((recon - images).pow(2).mean()), 5),
              "vae_reconstructions_classified_right": round(recon_acc, 4),
              "unet_params": sum(p.numel() for p in ema.parameters()), "unet_steps": args.steps,
              "vae_train_seconds": round(vae_s, 1), "unet_train_seconds": round(unet_s, 1),
              "train_seconds_total": round(vae_s + unet_s, 1), "sample_seconds": round(sample_s, 1),
              "load_average_1min": round(os.getloadavg()[0], 1), "guidance_scale": args.guidance,
              "sampler": args.sampler, "sample_steps": args.sample_steps,
              "classifier_real_heldout_acc": round(real_acc, 4),
              "per_digit_classified_as_intended": per_digit, "min_over_digits": min(per_digit.values()),
              "mean_over_digits": sum(per_digit.values()) / 10}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
