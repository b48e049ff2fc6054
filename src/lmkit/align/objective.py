"""Alignment objectives trained by lmkit's `Trainer`.

Reward-model and DPO training are supervised losses over fixed preference batches, so they
reuse `lmkit.train.Trainer` as is (optimizer, schedule, accumulation, clipping, precision,
checkpoints, resume, metrics.jsonl). The model the Trainer sees is an `Objective`: an
`nn.Module` whose forward takes a batch and returns ``ModelOutput(loss=...)``, and which
keeps the batch's extra metrics (rewards, margins, accuracy) until the Trainer's step is
logged. `ObjectiveTrainer` adds those metrics to every step's record and evaluates with
the objective's own held-out metrics (accuracy, margin) instead of token cross-entropy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
from torch import nn

from lmkit.train.trainer import Trainer, to_device


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(**batch) -> ModelOutput`` and call `record`."""

    def __init__(self) -> None:
        super().__init__()
        self._metrics: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def record(self, n: int = 1, **values: float | torch.Tensor) -> None:
        """Remember metrics of a batch of `n` examples (averaged, weighted by n, at the next pop)."""
        for k, v in values.items():
            self._metrics[k].append((float(v.detach().float().mean()) if torch.is_tensor(v) else float(v), n))

    def pop_metrics(self) -> dict[str, float]:
        out = {k: sum(v * n for v, n in vals) / max(sum(n for _, n in vals), 1) for k, vals in self._metrics.items()}
        self._metrics.clear()
        return out

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]], device: torch.device | None = None) -> dict[str, float]:
        """Run the objective over every batch in eval mode; the recorded metrics, averaged."""
        was = self.training
        self.eval()
        self.pop_metrics()
        try:
            for batch in batches:
                if device is not None:
                    batch = to_device(batch, device)
                out = self(**batch)
                n = batch["input_ids"].shape[0] // 2
                self.record(n, loss=out.loss)
            return self.pop_metrics()
        finally:
            self.train(was)


class ObjectiveTrainer(Trainer):
    """`Trainer` for an `Objective`: logs its metrics each step; eval = its held-out metrics."""

    def train_step(self, micro_batches):
        self.raw_model.pop_metrics()
        metrics = super().train_step(micro_batches)
        for k, v in self.raw_model.pop_metrics().items():
            if k != "loss":
                metrics[k] = v
        return metrics

    def evaluate(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        return {f"eval_{k}": v for k, v in self.raw_model.evaluate(self.eval_data, self.device).items()}
