"""`TrainConfig`: every knob of a training run in one validated dataclass.

Loaded from JSON or YAML; an unknown key is an error (a typo such as ``lerning_rate`` must
not silently fall back to a default and waste a run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd", "momentum")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("auto", "none", "ddp", "fsdp", "tp", "pp")
LOSS_WEIGHTINGS = ("token", "mean")
PIPELINE_SCHEDULES = ("1f1b", "gpipe")


@dataclass
class ParallelConfig:
    """How the processes of a run split the work: the ``parallel:`` section of a training config.

    dp x tp x pp must equal the number of processes (dp=0: whatever tp and pp leave). The
    processes form a DeviceMesh with named dims ("pp", "dp", "tp"), tp innermost so that a
    tensor-parallel group is the closest processes (one node's GPUs) and pipeline stages the
    farthest (torchtitan's order). Supported layouts: dp alone (DDP, or FSDP with ``fsdp: true``),
    tp alone (+ ``sequence_parallel``), dp x tp with ``fsdp: true`` (FSDP over dp of a TP-sharded
    model), pp alone, and pp with any of those inside each stage (pp x dp, pp x tp, pp x dp x tp
    with ``fsdp: true``; no sequence parallelism under pp).
    """

    dp: int = 0
    tp: int = 1
    pp: int = 1
    fsdp: bool = False  # shard parameters/grads/optimizer over the dp dim (fully_shard) instead of DDP
    sequence_parallel: bool = False  # with tp: norms and the residual stream split along the sequence
    pp_schedule: str = "1f1b"  # 1f1b | gpipe
    pp_microbatches: int = 0  # micro-batches each step's batch is cut into (0: pp)

    def __post_init__(self) -> None:
        for name in ("tp", "pp"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"ParallelConfig.{name}={getattr(self, name)!r}: must be a positive integer")
        for name in ("dp", "pp_microbatches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"ParallelConfig.{name}={getattr(self, name)!r}: must be an integer >= 0")
        if self.pp_schedule not in PIPELINE_SCHEDULES:
            raise ConfigError(f"ParallelConfig.pp_schedule={self.pp_schedule!r}: must be one of {PIPELINE_SCHEDULES}")
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError("ParallelConfig.sequence_parallel=True needs tp > 1")
        if self.pp > 1 and self.sequence_parallel:
            raise ConfigError("ParallelConfig: sequence_parallel with pp > 1 is not supported (a stage boundary "
                              "would carry a sequence shard); drop sequence_parallel or pp")

    def resolve(self, world_size: int) -> "ParallelConfig":
        """A copy with dp filled in for `world_size` processes; refuses a product that does not fit."""
        dp = self.dp or max(world_size // (self.tp * self.pp), 1)
        if dp * self.tp * self.pp != world_size:
            raise ConfigError(f"parallel: dp={dp} x tp={self.tp} x pp={self.pp} = {dp * self.tp * self.pp} "
                              f"processes, but {world_size} were launched")
        return dataclasses.replace(self, dp=dp)

    @classmethod
    def from_value(cls, value: "ParallelConfig | dict[str, Any]") -> "ParallelConfig":
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"TrainConfig.parallel: expected a mapping such as {{dp: 2, tp: 2}}, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"TrainConfig.parallel: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**value)


def parse_parallel(text: str) -> ParallelConfig:
    """A ``parallel:`` section from the command line: ``dp=2,tp=2,fsdp=true`` (values parsed as
    YAML scalars), or a .yaml/.json file whose ``parallel:`` mapping (top level, or inside its
    ``train:`` section, as in a pretrain config) gives the layout."""
    import yaml

    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        section = data.get("parallel", (data.get("train") or {}).get("parallel")) if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: no parallel: mapping (at the top level or under train:)")
        return ParallelConfig.from_value(section)
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"parallel {item!r}: expected KEY=VALUE such as tp=2 "
                              "(or a config file with a parallel: section)")
        values[key.strip()] = yaml.safe_load(value)
    return ParallelConfig.from_value(values)


@dataclass
class TrainConfig:
    # optimizer
    optimizer: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.9  # optimizer="momentum" only
    nesterov: bool = False  # optimizer="momentum" only
    decay_embeddings: bool = False  # apply weight decay to embedding tables too
    # learning-rate schedule
    schedule: str = "cosine"
    warmup_steps: int = 0
    max_steps: int = 1000
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio (cosine and linear)
    # step mechanics
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still reported)
    loss_weighting: str = "token"  # "token": every target token weighs the same; "mean": mean of micro-batch means
    shift_labels: bool = True  # labels are shifted inside the model (causal LM); used to count targets
    precision: str = "auto"  # auto: bf16 autocast where the hardware has bf16 units, else fp32 (train/precision.py)
    label_smoothing: float = 0.0
    gradient_checkpointing: bool = False
    compile: bool | str = "auto"  # auto: only runs of >= 5000 steps, where the compile time pays back (train/compile_choice.py)
    # distributed
    strategy: str = "auto"  # auto: DDP when launched by torchrun with >1 process, else none
    parallel: ParallelConfig | dict | None = None  # dp/tp/pp layout (ParallelConfig); set it with strategy "auto"
    # evaluation, checkpoints, logging
    eval_every: int = 0  # 0: never
    eval_steps: int = 50  # batches per evaluation (0: the whole eval set)
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 0  # 0: keep all; k: keep the k newest
    out_dir: str = "runs/lmkit"
    seed: int = 0
    log_every: int = 1
    tensorboard: bool = False
    plot: bool = False
    progress: bool | str = True  # True/"auto": bar on a terminal, sparse lines otherwise; "json"; False/"off"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # adversarial training on the input embeddings (train/adversarial.py)
    adversarial: str = "none"  # none | fgm | fgsm | pgd | freelb | substitution (train/substitution_adversary.py)
    adv_epsilon: float = 1.0  # L2 radius of the perturbation per example (fgsm: its max-norm)
    adv_alpha: float = 0.3  # step size of pgd/freelb ascent steps (freelb: also its random start)
    adv_steps: int = 3  # ascent steps of pgd/freelb/substitution
    adv_positions: float = 1.0  # substitution: share of the substitutable positions moved each step
    # meta-learning mode (train/meta_learning.py): None, or {algorithm: reptile|fomaml, inner_steps, inner_lr,
    # inner_optimizer, tasks_per_step, ...}; each step meta-updates over tasks_per_step episodes, lr = the outer lr
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("strategy", STRATEGIES),
            ("loss_weighting", LOSS_WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {allowed}")
        if self.parallel is not None:
            self.parallel = ParallelConfig.from_value(self.parallel)
            if self.strategy != "auto":
                bad("strategy", "must be 'auto' when a parallel: section gives the layout")
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(0.0 <= b < 1.0 for b in self.betas)
        ):
            bad("betas", "must be two numbers in [0, 1)")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "must be a positive number")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.eps <= 0:
            bad("eps", "must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", "must be in [0, 1)")
        if self.nesterov and (self.optimizer != "momentum" or self.momentum == 0):
            bad("nesterov", "needs optimizer='momentum' with momentum > 0")
        from lmkit.progress import MODES

        if not isinstance(self.progress, bool) and self.progress not in MODES:
            bad("progress", f"must be true, false or one of {MODES}")
        for name in ("max_steps", "grad_accum_steps", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                bad(name, "must be a positive integer")
        for name in ("warmup_steps", "eval_every", "eval_steps", "save_every", "keep_checkpoints", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "must be an integer >= 0")
        if self.warmup_steps > self.max_steps:
            bad("warmup_steps", f"must not exceed max_steps={self.max_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", "must be in [0, 1]")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            bad("max_grad_norm", "must be >= 0 or None")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", "must be in [0, 1)")
        if self.compile not in (True, False, "auto"):
            bad("compile", "must be true, false or 'auto'")
        if not self.out_dir:
            bad("out_dir", "must be a directory path")
        from lmkit.train.adversarial import METHODS

        if self.adversarial not in METHODS:
            bad("adversarial", f"must be one of {METHODS}")
        for name in ("adv_epsilon", "adv_alpha"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                bad(name, "must be a positive number")
        if not isinstance(self.adv_steps, int) or self.adv_steps < 1:
            bad("adv_steps", "must be a positive integer")
        if self.meta is not None:
            from lmkit.train.meta_learning import trainer_meta_config

            trainer_meta_config(self.meta)
            if self.grad_accum_steps != 1:
                bad("grad_accum_steps", "must be 1 with meta (a meta step draws meta.tasks_per_step episodes)")
            if self.adversarial != "none":
                bad("adversarial", "cannot be combined with meta")
        if not (isinstance(self.adv_positions, (int, float)) and 0.0 < self.adv_positions <= 1.0):
            bad("adv_positions", "must be in (0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError("TrainConfig: expected a mapping of field names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"TrainConfig: unknown keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"TrainConfig: not valid JSON ({exc})") from exc
        return cls.from_dict(d)

    @classmethod
    def from_yaml(cls, text: str) -> "TrainConfig":
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"TrainConfig: not valid YAML ({exc})") from exc
        return cls.from_dict(d if d is not None else {})

    def save(self, path: str | os.PathLike) -> None:
        from lmkit.atomic import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a .json, .yaml or .yml file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            return cls.from_yaml(text)
        return cls.from_json(text)
