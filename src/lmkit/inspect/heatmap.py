"""PNG figures for the inspect tools: attention heatmaps (one head, one layer's heads, or the
whole layers × heads grid), logit-lens tables and per-token saliency bars.

matplotlib is the `plot` extra, imported here only; files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lmkit.errors import require

MAX_PANELS = 64  # beyond this a grid is unreadable: ask for one layer or head instead


def _pyplot():
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    from lmkit.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_attention(
    maps: Sequence[torch.Tensor], tokens: Sequence[str], path: str | os.PathLike,
    layer: int | None = None, head: int | None = None, rollout: torch.Tensor | None = None,
) -> Path:
    """Heatmaps of attention maps (per layer [H, T, T] or [1, H, T, T]): rows are queries,
    columns keys. layer/head pick one; both None draw every layer × head (≤ 64 panels),
    plus the rollout matrix [T, T] as a last panel when given."""
    plt = _pyplot()
    maps = [m[0] if m.dim() == 4 else m for m in maps]
    layers = range(len(maps)) if layer is None else [layer]
    heads = range(maps[0].shape[0]) if head is None else [head]
    panels = [(f"layer {i} head {h}", maps[i][h]) for i in layers for h in heads]
    if rollout is not None:
        panels.append(("rollout", rollout[0] if rollout.dim() == 3 else rollout))
    if len(panels) > MAX_PANELS:
        raise ValueError(f"{len(panels)} heatmaps are too many for one figure; pick --layer and/or --head")
    cols = min(len(heads) + (rollout is not None and len(layers) == 1), 8) if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    t = len(tokens)
    size = max(2.5, 0.28 * t + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    labels = [tok if len(tok) <= 12 else tok[:11] + "…" for tok in tokens]
    for ax, (title, m) in zip(axes.flat, panels):
        ax.imshow(m.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(t), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(t), labels, fontsize=6)
    return _save(fig, path)


def plot_token_scores(tokens: Sequence[str], scores: torch.Tensor, path: str | os.PathLike, title: str = "") -> Path:
    """One bar per token (red positive, blue negative): saliency or IG attributions."""
    plt = _pyplot()
    vals = scores.detach().float().cpu().tolist()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(vals) + 1), 3))
    ax.bar(range(len(vals)), vals, color=["tab:red" if v >= 0 else "tab:blue" for v in vals])
    ax.set_xticks(range(len(vals)), list(tokens), rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_logit_lens(rows: Sequence[Sequence[str]], probs: torch.Tensor, tokens: Sequence[str],
                    path: str | os.PathLike) -> Path:
    """Layers × positions grid coloured by the top-1 probability, each cell naming its token."""
    plt = _pyplot()
    p = probs.detach().float().cpu().numpy()
    n_layers, t = p.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * t + 1), max(2.5, 0.45 * n_layers + 1)))
    ax.imshow(p, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for i in range(n_layers):
        for j in range(t):
            ax.text(j, i, rows[i][j][:8], ha="center", va="center", fontsize=6)
    ax.set_xticks(range(t), list(tokens), rotation=90, fontsize=7)
    ax.set_yticks(range(n_layers), [f"L{i}" for i in range(n_layers)], fontsize=7)
    ax.set_xlabel("input position (prediction read at each)")
    return _save(fig, path)
