"""Training metrics: one JSON object per line, plus optional TensorBoard and a loss-curve PNG.

JSONL is the primary record because it is appendable (a resumed run continues the same
file), greppable, and loads with one line of pandas. TensorBoard needs the `tensorboard`
package; the PNG needs matplotlib (`pip install 'lmkit[plot]'`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from lmkit.errors import require

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


class MetricsLogger:
    """Appends records to out_dir/metrics.jsonl; mirrors scalars to TensorBoard if asked."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        tensorboard: bool = False,
        plot: bool = False,
        enabled: bool = True,
        resume_from_step: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.plot = plot
        self.path = self.out_dir / METRICS_FILE
        self._writer = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None and self.path.exists():
            # drop records written after the checkpoint we resume from (they will be redone)
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_from_step]
            from lmkit.atomic import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        if tensorboard:
            tb = require("torch.utils.tensorboard", "tensorboard")
            self._writer = tb.SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:  # reopened per record: survives crashes
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, step)

    def close(self) -> Path | None:
        """Flush everything; write the loss-curve PNG if `plot`. Returns the PNG path."""
        if not self.enabled:
            return None
        if self._writer is not None:
            self._writer.flush()
        if self.plot:
            return plot_loss_curve(self.path, self.out_dir / PLOT_FILE)
        return None


def _pyplot():
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, png_path: str | os.PathLike, dpi: int) -> Path:
    """Write the figure atomically and release it."""
    from lmkit.atomic import atomic_path

    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png_path


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Train loss (and eval loss where present) against step, saved as a PNG."""
    plt = _pyplot()
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, png_path, dpi=100)


def plot_curves(records: Sequence[dict[str, Any]], keys: Sequence[str], png_path: str | os.PathLike,
                title: str = "", x_key: str = "step") -> Path:
    """One panel per metric in `keys` (records lacking a key are skipped), e.g. RL reward, KL, entropy."""
    plt = _pyplot()
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
    return _save_png(fig, png_path, dpi=80)
