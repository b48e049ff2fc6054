"""A class-conditional DCGAN on the scikit-learn digits, judged like the diffusion model
(bench_diffusion_digits.py): per digit, the fraction of 100 generated images that a
logistic-regression classifier of real digits assigns to the intended digit. One thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 bench/bench_gan_digits.py [--steps 3000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lmkit.vision.digits import digit_classifier, first_of_each_digit, judge_digit_samples, load_digit_images
from lmkit.vision.gan import GANConfig, sample_gan, train_gan
from lmkit.vision.image_grid import save_image_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--per-digit", type=int, default=100)
    ap.add_argument("--out", default="bench/data/gan_digits")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    images, labels = load_digit_images(8)
    start = time.time()
    generator = train_gan(images, labels, GANConfig(steps=args.steps))
    train_s = time.time() - start
    wanted = torch.arange(10).repeat_interleave(args.per_digit)
    samples = sample_gan(generator, wanted, torch.Generator().manual_seed(1))
    clf, real_acc = digit_classifier()
    per_digit = judge_digit_samples(samples, wanted, clf)
    grid_idx = first_of_each_digit(wanted)
    save_image_grid(samples[grid_idx], out / "samples.png", nrow=10, scale=4)
    result = {"train_steps": args.steps, "params_generator": sum(p.numel() for p in generator.parameters()),
              "train_seconds": round(train_s, 1), "load_average_1min": round(os.getloadavg()[0], 1),
              "classifier_real_heldout_acc": round(real_acc, 4),
              "per_digit_classified_as_intended": per_digit, "min_over_digits": min(per_digit.values()),
              "mean_over_digits": sum(per_digit.values()) / 10}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
