"""Learning curves of alignment runs as PNG (matplotlib, `pip install 'lmkit[plot]'`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from lmkit.errors import require


def plot_curves(records: Sequence[dict[str, Any]], keys: Sequence[str], png_path: str | os.PathLike,
                title: str = "", x_key: str = "step") -> Path:
    """One panel per metric in `keys` (records lacking a key are skipped), saved atomically."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmkit.atomic import atomic_path

    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = sorted({r[x_key]: r[key] for r in records if isinstance(r.get(key), (int, float))}.items())
        ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return png_path
