"""Class-conditional diffusion on the scikit-learn digits, judged by a classifier of real digits.

Trains the small UNet (vision/unet.py) with classifier-free guidance on the 1,797 8x8 digits,
samples 100 images per digit with DDPM (100 steps) and guidance, and reports, per digit, the
fraction that a logistic-regression classifier trained on real digits assigns to the intended digit
(issue 22's target: >= 80 % for every digit). One thread, as on the 2-core CI machine.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 bench/bench_diffusion_digits.py [--steps 2000] [--out DIR]
    ... --model DIR/model --guidance 3   # re-sample a saved model only
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
from lmkit.vision.diffusion_checkpoint import load_diffusion, save_diffusion
from lmkit.vision.diffusion_sampling import sample_images
from lmkit.vision.diffusion_training import DiffusionTrainConfig, train_diffusion
from lmkit.vision.digits import digit_classifier, first_of_each_digit, judge_digit_samples, load_digit_images
from lmkit.vision.image_grid import save_image_grid
from lmkit.vision.noise_schedule import NoiseSchedule
from lmkit.vision.unet import UNet, UNetConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddpm")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", default="linear")
    ap.add_argument("--prediction", default="epsilon")
    ap.add_argument("--per-digit", type=int, default=100)
    ap.add_argument("--out", default="bench/data/diffusion_digits")
    ap.add_argument("--model", default=None, help="a model directory saved by an earlier run: sample only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.out)

    images, labels = load_digit_images(8)
    schedule = NoiseSchedule(1000, args.schedule, prediction_type=args.prediction)
    config = UNetConfig(num_classes=10, base_channels=args.base_channels, channel_mults=(1, 2),
                        attention_levels=(False, True), num_heads=4)
    start = time.time()
    if args.model:
        ema, schedule, _ = load_diffusion(args.model)
        train_s = None
    else:
        train_config = DiffusionTrainConfig(steps=args.steps, lr=args.lr)
        ema = train_diffusion(UNet(config), schedule, images, labels, train_config)
        train_s = round(time.time() - start, 1)
        save_diffusion(out / "model", ema, schedule, 8)

    if args.sampler == "ddim":
        sampler = DDIMSampler(schedule, timestep_spacing="trailing")
    else:
        sampler = DDPMSampler(schedule)
    sampler.set_timesteps(args.sample_steps)
    wanted = torch.arange(10).repeat_interleave(args.per_digit)
    start = time.time()
    samples = sample_images(ema, sampler, (len(wanted), 1, 8, 8), wanted, guidance_scale=args.guidance,
                            generator=torch.Generator().manual_seed(1))
    sample_s = time.time() - start

    clf, real_acc = digit_classifier()
    per_digit = judge_digit_samples(samples, wanted, clf)
    grid_idx = first_of_each_digit(wanted)
    save_image_grid(samples[grid_idx], out / "samples.png", nrow=10, scale=4)
    result = {"train_steps": args.steps, "params": sum(p.numel() for p in ema.parameters()),
              "train_seconds": train_s, "sample_seconds": round(sample_s, 1),
              "load_average_1min": round(os.getloadavg()[0], 1),
              "guidance_scale": args.guidance, "sampler": args.sampler, "sample_steps": args.sample_steps,
              "schedule": args.schedule, "prediction": args.prediction, "lr": args.lr,
              "classifier_real_heldout_acc": round(real_acc, 4),
              "per_digit_classified_as_intended": per_digit, "min_over_digits": min(per_digit.values()),
              "mean_over_digits": sum(per_digit.values()) / 10}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
