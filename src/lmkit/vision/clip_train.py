"""Contrastive training of a `CLIP` on (image, caption) pairs, and zero-shot evaluation.

A plain loop (AdamW, cosine decay after a linear warm-up, logit_scale clamped at log 100 after
each step as in CLIP): the pairs of a small image set fit in memory, so a random batch of
pairs is drawn each step. Progress goes through lmkit.progress.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lmkit.progress import Progress
from lmkit.vision.clip import CLIP


@contextlib.contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Inside: subnormal floats are flushed to zero. Late in CLIP training some values become
    subnormal and CPU math on them is slow (measured: ~4x slower steps after ~100 steps); torch has no
    getter for the setting, so on exit it goes back to torch's default (off)."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@dataclass
class CLIPTrainResult:
    steps: int
    final_loss: float
    seconds: float


def train_clip(
    model: CLIP, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, steps: int = 400,
    batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 0.05, warmup: int = 20, seed: int = 0,
    progress: bool | str | None = None, flush_denormals: bool = True,
) -> CLIPTrainResult:
    """Train on the matched pairs (pixels[i], ids[i]) with the symmetric InfoNCE loss
    (with subnormals flushed to zero unless flush_denormals=False, see `denormals_flushed`)."""
    with denormals_flushed(flush_denormals):
        return _train(model, pixels, ids, mask, steps, batch_size, lr, weight_decay, warmup, seed, progress)


def warmup_cosine(step: int, warmup: int, steps: int) -> float:
    """LR factor of the vision trainers: linear warm-up from 1/warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _train(model, pixels, ids, mask, steps, batch_size, lr, weight_decay, warmup, seed, progress) -> CLIPTrainResult:
    if not (pixels.shape[0] == ids.shape[0] == mask.shape[0]):
        raise ValueError(f"{pixels.shape[0]} images but {ids.shape[0]} captions: pairs must match")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, steps))
    model.train()
    start, loss = time.perf_counter(), torch.tensor(float("nan"))
    bar = Progress(total=steps, desc="clip train", unit="step", progress=progress)
    for _ in bar.track(range(steps)):
        idx = torch.randperm(pixels.shape[0], generator=g)[:batch_size]
        loss = model(pixels[idx], ids[idx], mask[idx], return_loss=True)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        model.clamp_logit_scale()
        bar.set_postfix(loss=round(loss.item(), 3))
    model.eval()
    return CLIPTrainResult(steps=steps, final_loss=float(loss.detach()), seconds=time.perf_counter() - start)


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIP, pixels: torch.Tensor, labels: torch.Tensor, prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None = None, batch_size: int = 512, prompts_per_class: int = 1,
) -> float:
    """Fraction of images whose most similar class prompt (row c of prompt_ids is class c) is their label."""
    model.eval()
    right = 0
    for i in range(0, pixels.shape[0], batch_size):
        probs = model.zero_shot_classify(pixels[i:i + batch_size], prompt_ids, prompt_mask, prompts_per_class)
        right += int((probs.argmax(-1) == labels[i:i + batch_size]).sum())
    return right / max(1, pixels.shape[0])
