"""Images from files or bytes to model pixels: Pillow decodes, converts to grey or RGB, resizes
(bilinear) to the model's square size and scales to [-1, 1], the range lmkit's vision models train on."""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from lmkit.errors import ConfigError, require


def image_pixels(source: str | os.PathLike | bytes, image_size: int, channels: int) -> torch.Tensor:
    """One image (a path, or the bytes of a PNG/JPEG/... file) -> [channels, image_size, image_size] in [-1, 1]."""
    image_mod = require("PIL.Image", "test")
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    try:
        with image_mod.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), image_mod.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except image_mod.UnidentifiedImageError as exc:
        raise ConfigError(f"not an image Pillow can read: {exc}") from None
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a)) * 2 - 1
