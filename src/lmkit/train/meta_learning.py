"""Meta-learning for few-shot adaptation: Reptile and first-order MAML over a family of tasks.

Plain multi-task training finds weights that are good *on average* over the tasks; when tasks
contradict each other (each task a different cipher) that average is a poor starting point.
Meta-learning instead looks for weights θ from which a few gradient steps on k examples of a
*new* task work well:

    inner loop (per task i)   φ_i = θ after `inner_steps` steps of SGD/Adam on task i's support batch
    Reptile (Nichol et al. 2018)      θ ← θ − β · mean_i (θ − φ_i)          (move towards the adapted weights)
    FOMAML (Finn et al. 2017, first-order)
                                       θ ← θ − β · mean_i ∇_φ L_query_i(φ_i)  (query-set gradient at φ_i,
                                                                           second derivatives dropped)

The outer update is an optimizer step (SGD by default, lr β) on that pseudo-gradient. Only
parameters with requires_grad take part, so LoRA meta-learning is: inject LoRA, freeze the
base (`peft.mark_only_lora_trainable`), then meta-train — the adapters are what is learned.

A task is any callable `task(n, generator) -> (input_ids [n, T], labels [n, T])` (labels
-100 where no loss); the model is an lmkit LM whose forward takes `labels=` and returns `.loss`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from lmkit.errors import ConfigError

Task = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
ALGORITHMS = ("reptile", "fomaml")
INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class MetaConfig:
    """algorithm; inner loop (steps, lr, optimizer, support size k); outer loop (lr β, tasks
    per meta step, query size for FOMAML)."""

    algorithm: str = "reptile"
    inner_steps: int = 5
    inner_lr: float = 1e-3
    inner_optimizer: str = "adam"
    support_size: int = 5
    query_size: int = 16
    outer_lr: float = 0.1
    tasks_per_step: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"MetaConfig.algorithm={self.algorithm!r}: must be one of {ALGORITHMS}")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"MetaConfig.inner_optimizer={self.inner_optimizer!r}: must be one of {INNER_OPTIMIZERS}")
        for name in ("inner_steps", "support_size", "query_size", "tasks_per_step"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"MetaConfig.{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("inner_lr", "outer_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"MetaConfig.{name}={getattr(self, name)!r}: must be > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no parameter with requires_grad: nothing to meta-learn")
    return params


def adapt(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
          optimizer: str = "adam") -> float:
    """Fine-tune `model` in place on one (small) batch for `steps` steps; the last loss.

    This is the inner loop of meta-training and also few-shot adaptation at test time."""
    params = trainable(model)
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = model(ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


class MetaLearner:
    """Reptile / FOMAML meta-training of `model`'s trainable parameters (see the module docstring)."""

    def __init__(self, model: nn.Module, config: MetaConfig | None = None,
                 outer_optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model, self.config = model, config or MetaConfig()
        self.params = trainable(model)
        self.outer = outer_optimizer or torch.optim.SGD(self.params, lr=self.config.outer_lr)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.steps = 0

    def meta_step(self, tasks: Sequence[Task]) -> float:
        """One outer update over `tasks` (each sampled once); the mean inner (or query) loss."""
        cfg = self.config
        theta = [p.detach().clone() for p in self.params]
        grads = [torch.zeros_like(p) for p in self.params]
        losses = []
        for task in tasks:
            ids, labels = task(cfg.support_size, self.generator)
            losses.append(adapt(self.model, ids, labels, cfg.inner_steps, cfg.inner_lr, cfg.inner_optimizer))
            if cfg.algorithm == "reptile":
                for g, p, t in zip(grads, self.params, theta):
                    g += (t - p.detach()) / len(tasks)
            else:
                q_ids, q_labels = task(cfg.query_size, self.generator)
                self.model.train()
                loss = self.model(q_ids, labels=q_labels).loss
                step_grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                self.model.eval()
                losses[-1] = float(loss)
                for g, sg in zip(grads, step_grads):
                    if sg is not None:
                        g += sg / len(tasks)
            with torch.no_grad():  # back to θ for the next task
                for p, t in zip(self.params, theta):
                    p.copy_(t)
        for p, g in zip(self.params, grads):
            p.grad = g
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        self.steps += 1
        return sum(losses) / len(losses)

    def train(self, sample_tasks: Callable[[int, torch.Generator], Sequence[Task]], meta_steps: int,
              progress: bool | str | None = False) -> list[float]:
        """`meta_steps` outer updates, each over `sample_tasks(tasks_per_step, generator)`; the losses."""
        from lmkit.progress import Progress

        out = []
        with Progress(meta_steps, desc=self.config.algorithm, unit="meta-step", progress=progress) as bar:
            for _ in range(meta_steps):
                out.append(self.meta_step(sample_tasks(self.config.tasks_per_step, self.generator)))
                bar.update()
                bar.set_postfix(loss=f"{out[-1]:.3f}")
        return out
