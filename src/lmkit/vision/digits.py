"""The scikit-learn handwritten digits (1,797 images, 8x8, grey levels 0..16) as diffusion data.

They ship with scikit-learn, so nothing is downloaded. Pixels are mapped to [-1, 1], the range
the samplers' `clip_sample` assumes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.errors import ConfigError, require


def load_digit_images(image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, S, S) in [-1, 1], labels (N,)); S > 8 upsamples bilinearly."""
    datasets = require("sklearn.datasets", "test")
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images, torch.tensor(digits.target, dtype=torch.long)


def to_digit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any size) back to the 8x8 0..16 grid of the original data, flattened
    to 64 features, e.g. for a classifier trained on the real digits."""
    if images.shape[-1] != 8:
        images = F.adaptive_avg_pool2d(images, 8)
    return ((images.clamp(-1, 1) + 1) * 8.0).flatten(1)


def digit_classifier(seed: int = 0):
    """A logistic-regression classifier of the real digits (fit on all 1,797) and its accuracy on
    a held-out quarter (fit on the rest): the judge of generated digits, fed `to_digit_pixels`."""
    datasets = require("sklearn.datasets", "test")
    linear_model = require("sklearn.linear_model", "test")
    model_selection = require("sklearn.model_selection", "test")
    digits = datasets.load_digits()
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(digits.data, digits.target, test_size=0.25,
                                                              random_state=seed)
    held_out = linear_model.LogisticRegression(max_iter=5000).fit(x_tr, y_tr).score(x_te, y_te)
    return linear_model.LogisticRegression(max_iter=5000).fit(digits.data, digits.target), float(held_out)


def judge_digit_samples(samples: torch.Tensor, wanted: torch.Tensor, classifier) -> dict[int, float]:
    """Per digit, the share of the samples generated for it that `classifier` (see
    `digit_classifier`) reads as that digit: the figure both generative benches report."""
    predicted = torch.tensor(classifier.predict(to_digit_pixels(samples).numpy()))
    return {d: float((predicted[wanted == d] == d).float().mean()) for d in range(10)}


def first_of_each_digit(wanted: torch.Tensor, per_digit: int = 10) -> torch.Tensor:
    """Indices of the first `per_digit` samples of each digit, in digit order: a 10-row grid."""
    return torch.cat([torch.nonzero(wanted == d).flatten()[:per_digit] for d in range(10)])
