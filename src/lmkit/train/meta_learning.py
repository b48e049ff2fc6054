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

Two front ends compute the same update through `sample_episode` and `meta_gradient`:
`MetaLearner` (its own loop) and the Trainer's meta mode (TrainConfig.meta, with
`MetaEpisodes` as its training data, so the Trainer's optimizer, schedule and checkpoints apply).

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


TRAINER_MANAGED = {"outer_lr": "the outer step is the Trainer's optimizer: set TrainConfig.lr (and optimizer)"}


def trainer_meta_config(meta: dict) -> MetaConfig:
    """TrainConfig.meta -> MetaConfig (every MetaConfig key but outer_lr, which is TrainConfig.lr)."""
    if not isinstance(meta, dict):
        raise ConfigError(f"TrainConfig.meta={meta!r}: give a mapping such as {{algorithm: reptile, inner_steps: 5}}")
    for key, why in TRAINER_MANAGED.items():
        if key in meta:
            raise ConfigError(f"TrainConfig.meta.{key}: {why}")
    known = {f.name for f in dataclasses.fields(MetaConfig)} - set(TRAINER_MANAGED)
    unknown = sorted(set(meta) - known)
    if unknown:
        raise ConfigError(f"TrainConfig.meta: unknown keys {unknown}; known keys are {sorted(known)}")
    return MetaConfig(**meta)


Episode = dict  # {"input_ids", "labels"} (the support set) + {"query_input_ids", "query_labels"} for FOMAML


def sample_episode(task: Task, config: MetaConfig, generator: torch.Generator) -> Episode:
    """One task's support batch (and, for FOMAML, its query batch), drawn from `generator`."""
    ids, labels = task(config.support_size, generator)
    episode = {"input_ids": ids, "labels": labels}
    if config.algorithm == "fomaml":
        episode["query_input_ids"], episode["query_labels"] = task(config.query_size, generator)
    return episode


def meta_gradient(model: nn.Module, params: Sequence[nn.Parameter], episodes: Sequence[Episode],
                  config: MetaConfig) -> tuple[list[torch.Tensor], float]:
    """The outer pseudo-gradient over `episodes` (one per task) and the mean inner (or query) loss.

    Reptile: mean_i (θ − φ_i); FOMAML: mean_i ∇_φ L_query,i(φ_i). The model's `params` are
    back at θ when this returns; an outer optimizer step on the result is the meta-update."""
    theta = [p.detach().clone() for p in params]
    grads = [torch.zeros_like(p) for p in params]
    losses = []
    for episode in episodes:
        losses.append(adapt(model, episode["input_ids"], episode["labels"], config.inner_steps, config.inner_lr,
                            config.inner_optimizer))
        if config.algorithm == "reptile":
            for g, p, t in zip(grads, params, theta):
                g += (t - p.detach()) / len(episodes)
        else:
            if "query_input_ids" not in episode:
                raise ConfigError("FOMAML needs a query batch per task: episodes with query_input_ids and query_labels")
            model.train()
            loss = model(episode["query_input_ids"], labels=episode["query_labels"]).loss
            step_grads = torch.autograd.grad(loss, params, allow_unused=True)
            model.eval()
            losses[-1] = float(loss.detach())
            for g, sg in zip(grads, step_grads):
                if sg is not None:
                    g += sg / len(episodes)
        with torch.no_grad():  # back to θ for the next task
            for p, t in zip(params, theta):
                p.copy_(t)
    return grads, sum(losses) / len(losses)


def set_pseudo_gradient(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> None:
    """Put the meta pseudo-gradient where an optimizer looks for it (p.grad)."""
    for p, g in zip(params, grads):
        p.grad = g


class MetaEpisodes:
    """An endless iterable of episode dicts for the Trainer's meta mode (TrainConfig.meta):
    per meta step, `sample_tasks(tasks_per_step, generator)` tasks, each yielding one episode
    (`sample_episode`). With the same seed it draws what `MetaLearner.train` draws."""

    def __init__(self, sample_tasks: Callable[[int, torch.Generator], Sequence[Task]], config: MetaConfig) -> None:
        self.sample_tasks, self.config = sample_tasks, config

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.config.seed)
        while True:
            for task in self.sample_tasks(self.config.tasks_per_step, generator):
                yield sample_episode(task, self.config, generator)


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
        episodes = [sample_episode(task, self.config, self.generator) for task in tasks]
        grads, loss = meta_gradient(self.model, self.params, episodes, self.config)
        set_pseudo_gradient(self.params, grads)
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        self.steps += 1
        return loss

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
