"""Save a batch of images as one PNG grid (Pillow), the way generated samples are looked at."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmkit.atomic import atomic_path
from lmkit.errors import require


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 4,
                    padding: int = 1) -> Path:
    """Write images (N, C, H, W) in [-1, 1] (C = 1 or 3) as a grid PNG, `nrow` per row,
    each pixel enlarged `scale` times. Written to a temporary file, then renamed."""
    image_mod = require("PIL.Image", "test")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[i]
    array = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    picture = image_mod.fromarray(array, mode="L" if c == 1 else "RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), image_mod.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
