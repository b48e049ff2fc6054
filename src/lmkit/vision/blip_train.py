"""Training a `BLIP` on (image, caption) pairs with ITC + ITM (hard negatives) + LM.

The same plain loop as CLIP's (vision/clip_train.py): the pairs fit in memory, a random batch is
drawn each step, AdamW with a linear warm-up then cosine decay, gradients clipped at 1, the ITC
scale clamped after each step, subnormals flushed to zero on CPU. Progress goes through
lmkit.progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmkit.progress import Progress
from lmkit.vision.blip import BLIP
from lmkit.vision.blip_losses import blip_losses
from lmkit.vision.clip_train import denormals_flushed, warmup_cosine


@dataclass
class BLIPTrainResult:
    steps: int
    seconds: float
    final: dict[str, float] = field(default_factory=dict)  # itc, itm, lm, loss of the last step


def train_blip(
    model: BLIP, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, steps: int = 1000,
    batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05, warmup: int = 50,
    enc_token_id: int | None = None, hard_share: float = 1.0, seed: int = 0, progress: bool | str | None = None,
    flush_denormals: bool = True,
) -> BLIPTrainResult:
    """Train on the matched pairs (pixels[i], ids[i]); ids start with [CLS] (see `blip_losses`)."""
    if not (pixels.shape[0] == ids.shape[0] == mask.shape[0]):
        raise ValueError(f"{pixels.shape[0]} images but {ids.shape[0]} captions: pairs must match")
    missing = [p for p in ("retrieval", "captioning") if p not in model.config.parts]
    if missing:
        raise ValueError(f"training with ITC + ITM + LM needs both BLIP parts; this model lacks {missing}")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: ITC and ITM need at least 2 pairs per batch")
    with denormals_flushed(flush_denormals):
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, steps))
        model.train()
        start, losses = time.perf_counter(), {}
        bar = Progress(total=steps, desc="blip train", unit="step", progress=progress)
        for _ in bar.track(range(steps)):
            idx = torch.randperm(pixels.shape[0], generator=g)[:batch_size]
            losses = blip_losses(model, pixels[idx], ids[idx], mask[idx], enc_token_id=enc_token_id, generator=g,
                                 hard_share=hard_share)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            model.clamp_logit_scale()
            bar.set_postfix(**{k: round(v.item(), 3) for k, v in losses.items()})
        model.eval()
    return BLIPTrainResult(steps=steps, seconds=time.perf_counter() - start,
                           final={k: float(v.detach()) for k, v in losses.items()})
