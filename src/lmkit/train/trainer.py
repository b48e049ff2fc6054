"""`Trainer`: the training loop — accumulation, clipping, mixed precision, eval, checkpoints.

One optimizer update ("step") consumes `grad_accum_steps` micro-batches on every rank.

Loss weighting across micro-batches (and ranks). The model returns the *mean* loss of a
micro-batch. Two ways to combine them:
  token (default)  every target token weighs the same: the step's loss is
                   sum_i(mean_i * n_i) / sum_i n_i over all micro-batches of all ranks,
                   n_i = the micro-batch's target tokens (labels != -100 after the shift).
                   This equals the loss of one big batch, so N ranks x k micro-batches give
                   the same gradient as one process with N*k micro-batches or one batch,
                   whatever the padding — the property the DDP test checks.
  mean             mean of micro-batch means (each divided by grad_accum_steps, as most
                   tutorials do). Micro-batches with few real tokens then weigh as much as
                   full ones, so the result depends on how the data was split.
Each micro-batch loss is multiplied by its weight *before* backward, so gradients
accumulate into the right sum; DDP then averages over ranks (hence the factor world_size).

Mixed precision: bf16 runs the forward/backward under `torch.autocast` with fp32 master
weights (CPU and GPU; no loss scaling needed — bf16 has fp32's exponent range). fp16 needs
a `GradScaler` (loss scaling keeps small gradients from flushing to zero) and a GPU.
precision="auto" (the default) picks bf16 where the hardware has bf16 units and fp32
elsewhere (train/precision.py); `self.precision` is the resolved choice.

Checkpoints (train/checkpoint.py) hold everything needed to continue *exactly*: weights,
optimizer and scheduler state, all RNG states, the data position and the step. On CPU a run
that is stopped and resumed reproduces the uninterrupted run's losses bit for bit.
Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and stops;
a second Ctrl-C aborts at once.

Meta-learning mode (TrainConfig.meta, e.g. {algorithm: reptile, inner_steps: 5, inner_lr: 1e-3,
tasks_per_step: 4}): each step takes `tasks_per_step` episodes from train_data (dicts with a
support batch input_ids/labels, and query_input_ids/query_labels for FOMAML; MetaEpisodes
makes them from a task family), runs the inner loops and hands the Reptile / FOMAML
pseudo-gradient (train/meta_learning.py, the same functions as MetaLearner) to the optimizer:
TrainConfig.lr is the outer learning rate, with the usual schedule, clipping and checkpoints.
Freeze all but LoRA first to meta-learn adapters only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lmkit.errors import CheckpointError, ConfigError
from lmkit.train import checkpoint as ckpt_io
from lmkit.train import distributed as D
from lmkit.train.compile_choice import announce_compile, resolve_compile
from lmkit.train.config import TrainConfig
from lmkit.train.losses import count_targets, cross_entropy
from lmkit.train.metrics_log import MetricsLogger
from lmkit.train.optim import build_optimizer
from lmkit.train import parallel_plan, pipeline_parallel
from lmkit.train.parallel_plan import apply_layout, pipeline_loss, resolve_layout, sum_partial_grads
from lmkit.train.precision import announce_precision, autocast, resolve_precision
from lmkit.train.schedule import build_scheduler
from lmkit.train.tensor_parallel import clip_grad_norm, parallel_loss


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor moved to `device` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _jsonable(obj: Any) -> bool:
    try:
        json.dumps(obj)
        return True
    except (TypeError, ValueError):
        return False


class Trainer:
    """Train `model` on `train_data` (an iterable of dicts passed as ``model(**batch)``).

    resume: False (fresh run), True (continue from the latest checkpoint in
    ``config.out_dir`` if there is one), or a path to a checkpoint / run directory.
    If `train_data` has ``state_dict()`` / ``load_state_dict()``, its position is saved and
    restored; otherwise the already consumed batches are skipped on resume.
    penalty: a callable ``penalty(model) -> scalar tensor`` added to each step's loss
    (train/forgetting_penalty.py: EWC, L2-SP); reported as the step's ``penalty``.
    substitutions: the word-substitution sets ``{id: [ids]}`` or a [V, k] id tensor that
    ``adversarial: substitution`` trains against (train/substitution_adversary.py).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: Iterable,
        eval_data: Iterable | None = None,
        *,
        resume: bool | str = False,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        substitutions: Mapping[int, Sequence[int]] | torch.Tensor | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.dist = D.init_distributed(config.device)
        self.device = self.dist.device
        self.layout = resolve_layout(config, self.dist)  # train/parallel_plan.py
        self.strategy = self.layout.strategy
        if penalty is not None and self.strategy not in ("none", "ddp"):
            raise ConfigError(
                f"a weight penalty (EWC / L2-SP) needs whole parameters; use strategy 'ddp' or 'none', not {self.strategy!r}"
            )
        # tensor-parallel ranks (and pipeline stages) are one model replica: same data, same
        # dropout masks, no averaging; data parallelism spans the dp dim only
        self.data_world = self.layout.data_world
        self.penalty = penalty
        self.out_dir = Path(config.out_dir)
        self.precision, why = resolve_precision(config.precision, self.device)
        self._check_precision()
        if self.dist.is_main:
            announce_precision(config.precision, self.precision, why)

        set_seed(config.seed + self.layout.data_rank)
        self.raw_model = model.to(self.device)
        self.raw_model.train()
        # names/shapes before any wrapping (FSDP would shard them)
        self.param_shapes = {k: list(v.shape) for k, v in self.raw_model.state_dict().items()}
        self.param_names = {id(p): n for n, p in self.raw_model.named_parameters()}
        self.model_class = type(self.raw_model).__name__  # FSDP renames the class when it wraps

        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.tokens_seen = 0
        self.history: list[dict[str, Any]] = []

        ckpt = self._find_resume(resume)
        ckpt_state = None
        if ckpt is not None:
            ckpt_state = ckpt_io.read_state(ckpt)
            self._check_architecture(ckpt_state, ckpt)
            self.raw_model.load_state_dict(ckpt_io.read_model_state(ckpt), strict=True)

        if config.gradient_checkpointing:
            enable = getattr(self.raw_model, "gradient_checkpointing_enable", None)
            if enable is None:
                raise ConfigError(
                    f"gradient_checkpointing=True but {type(self.raw_model).__name__} has no "
                    "gradient_checkpointing_enable() method; set gradient_checkpointing=False "
                    "or add the method to the model"
                )
            enable()

        self._pp_denominator = [1.0]  # the step's target count, read by the pipeline's loss
        self.model, self.pipeline = apply_layout(
            self.raw_model, self.layout, self.dist,
            loss_fn=pipeline_loss(config.label_smoothing, config.shift_labels, self._pp_denominator),
        )
        if self.pipeline is not None:  # this rank's stage: the parameters it owns and updates
            self.raw_model = self.model
        self.compiled, why = resolve_compile(config.compile, config.max_steps, self.device)
        if self.dist.is_main:
            announce_compile(config.compile, self.compiled, why, config.max_steps)
        if self.compiled:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, config)
        if self.layout.tensor_parallel:  # the multi-tensor kernels refuse DTensor and plain tensors in one list
            for group in self.optimizer.param_groups:
                group["foreach"] = False
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.adversary = None
        if config.adversarial != "none" and penalty is not None:
            raise ConfigError("adversarial training and a weight penalty (EWC / L2-SP) cannot be combined yet")
        if (config.adversarial == "substitution") != (substitutions is not None):
            raise ConfigError("adversarial='substitution' and the Trainer's `substitutions` (the word-substitution "
                              "sets to train against) go together: give both or neither")
        if config.adversarial == "substitution":
            from lmkit.train.substitution_adversary import SubstitutionAdversary

            self.adversary = SubstitutionAdversary(self.raw_model, substitutions, config.adv_alpha, config.adv_steps,
                                                   config.adv_positions)
        elif config.adversarial != "none":
            from lmkit.train.adversarial import EmbeddingAdversary

            self.adversary = EmbeddingAdversary(self.raw_model, config.adversarial, config.adv_epsilon,
                                                config.adv_alpha, config.adv_steps)

        self.meta = None
        if config.meta is not None:  # meta-learning mode: each step is a Reptile / FOMAML meta-update
            self._check_meta(penalty)
            from lmkit.train.meta_learning import trainer_meta_config

            self.meta = trainer_meta_config(config.meta)

        self.train_data = self._shard(train_data)
        self.eval_data = self._shard(eval_data) if eval_data is not None else None
        self._resumable_data = callable(getattr(train_data, "state_dict", None)) and callable(
            getattr(train_data, "load_state_dict", None)
        )

        if ckpt is not None:
            self._restore(ckpt, ckpt_state)
        self.logger = MetricsLogger(
            self.out_dir,
            tensorboard=config.tensorboard,
            plot=config.plot,
            enabled=self.dist.is_main,
            resume_from_step=self.step if ckpt is not None else None,
        )
        self._stop_requested = False
        self._last_saved_step = self.step if ckpt is not None else -1

    # ---- setup helpers ----------------------------------------------------------------------
    def _check_precision(self) -> None:
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                "precision='fp16' needs a CUDA GPU (fp16 training needs loss scaling with "
                "torch.amp.GradScaler, which lmkit runs on CUDA only); on CPU use 'bf16' or 'fp32'"
            )

    def _check_meta(self, penalty) -> None:
        if penalty is not None:
            raise ConfigError("meta-learning and a weight penalty (EWC / L2-SP) cannot be combined yet")
        if self.strategy != "none":
            raise ConfigError(f"meta-learning runs on one process (strategy 'none'), not {self.strategy!r}")
        if self.precision == "fp16":
            raise ConfigError("meta-learning does not support fp16 loss scaling; use precision 'bf16' or 'fp32'")

    def _autocast(self):
        return autocast(self.precision, self.device)

    def _shard(self, data: Iterable) -> Iterable:
        """This rank's batches: its share along the dp dim (all of them when dp is 1)."""
        if self.layout.data_world <= 1:
            return data
        return D.ShardedIterable(data, self.layout.data_rank, self.layout.data_world)

    def _find_resume(self, resume: bool | str) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            return ckpt_io.latest_checkpoint(self.out_dir)  # none yet: a fresh start
        return ckpt_io.resolve_checkpoint(resume)

    def _model_config_dict(self) -> dict | None:
        cfg = getattr(self.raw_model, "config", None)
        return cfg.to_dict() if hasattr(cfg, "to_dict") else None

    def _check_architecture(self, state: dict, ckpt: Path) -> None:
        saved_cls = state.get("model_class")
        here_cls = self.model_class
        saved_cfg, here_cfg = state.get("model_config"), self._model_config_dict()
        problems = []
        if saved_cls and saved_cls != here_cls:
            problems.append(f"model class {saved_cls} in the checkpoint vs {here_cls} here")
        if saved_cfg is not None and here_cfg is not None:
            diff = sorted(
                k for k in set(saved_cfg) | set(here_cfg)
                if k != "extra" and saved_cfg.get(k) != here_cfg.get(k)
            )
            if diff:
                problems.append(
                    "config differs in " + ", ".join(f"{k} ({saved_cfg.get(k)!r} vs {here_cfg.get(k)!r})" for k in diff[:8])
                )
        saved_shapes = state.get("param_shapes", {})
        missing = sorted(set(self.param_shapes) - set(saved_shapes))
        unexpected = sorted(set(saved_shapes) - set(self.param_shapes))
        reshaped = sorted(
            k for k in set(saved_shapes) & set(self.param_shapes) if saved_shapes[k] != self.param_shapes[k]
        )
        if missing:
            problems.append(f"{len(missing)} parameters missing from the checkpoint (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected parameters in the checkpoint (e.g. {unexpected[:3]})")
        if reshaped:
            k = reshaped[0]
            problems.append(
                f"{len(reshaped)} parameters with other shapes (e.g. {k}: {saved_shapes[k]} vs {self.param_shapes[k]})"
            )
        if problems:
            raise CheckpointError(
                f"checkpoint {ckpt} was saved from a different architecture: " + "; ".join(problems)
                + ". Build the model with the checkpoint's config (trainer_state.json: model_config) "
                "or start a fresh run."
            )

    # ---- state (de)serialisation --------------------------------------------------------------
    def _full_model_state(self) -> dict[str, torch.Tensor]:
        if self.layout.pipeline:  # each stage holds its own layers (tp / fsdp: as DTensors)
            state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu()
                     for k, v in self.raw_model.state_dict().items()}
            return parallel_plan.gather_stage_states(state, self.layout.pp_group)
        if self.strategy in ("fsdp", "tp", "fsdp+tp"):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.raw_model.state_dict()

    def _full_optimizer_state(self) -> dict[str, Any]:
        """Optimizer state keyed by parameter *name* (the same format as torch DCP's)."""
        if self._dtensor_stage:  # every rank of the stage gets its full state, then the stages merge
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            named = get_optimizer_state_dict(self.raw_model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True))
            return parallel_plan.gather_stage_optimizer_states(named, self.layout.pp_group)
        if self.strategy in ("fsdp", "tp", "fsdp+tp"):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.raw_model, self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        sd = self.optimizer.state_dict()
        order = [self.param_names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        named = {
            "state": {order[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]],
        }
        return parallel_plan.gather_stage_optimizer_states(named, self.layout.pp_group) if self.layout.pipeline else named

    @property
    def _dtensor_stage(self) -> bool:
        """A pipeline stage whose parameters are DTensors (tp or fsdp inside the stage)."""
        return self.layout.pipeline and self.strategy != "pp"

    def _load_optimizer_state(self, named: dict[str, Any]) -> None:
        if self._dtensor_stage:  # this stage's share of the whole model's state
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            own = {name for name, _ in self.raw_model.named_parameters()}
            set_optimizer_state_dict(
                self.raw_model, self.optimizer, optim_state_dict=parallel_plan.own_optimizer_state(named, own),
                options=StateDictOptions(full_state_dict=True),
            )
            return
        if self.strategy in ("fsdp", "tp", "fsdp+tp"):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.raw_model, self.optimizer, optim_state_dict=named,
                options=StateDictOptions(full_state_dict=True),
            )
            return
        order = [self.param_names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        index = {name: i for i, name in enumerate(order)}
        if self.layout.pipeline:  # this stage's share of the whole model's state
            named = parallel_plan.own_optimizer_state(named, set(order))
        # torch pairs saved and current parameters by position inside each group: list the saved
        # names in this optimizer's order (a merged pipeline or DCP state may list them otherwise)
        current = [[self.param_names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        try:
            groups = []
            for saved, names in zip(named["param_groups"], current):
                if set(saved["params"]) != set(names):
                    raise ValueError(f"a parameter group holds {sorted(set(saved['params']) ^ set(names))[:3]} "
                                     "on one side only")
                groups.append({**saved, "params": [index[n] for n in names]})
            if len(named["param_groups"]) != len(current):
                raise ValueError(f"{len(named['param_groups'])} parameter groups saved, {len(current)} here")
            sd = {"state": {index[name]: s for name, s in named["state"].items()}, "param_groups": groups}
            self.optimizer.load_state_dict(sd)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"the optimizer state does not fit this model/optimizer ({exc}); was the "
                "checkpoint saved with another optimizer or weight-decay grouping?"
            ) from exc

    def _restore(self, ckpt: Path, state: dict[str, Any]) -> None:
        saved_opt = state.get("train_config", {}).get("optimizer")
        if saved_opt and saved_opt != self.config.optimizer:
            raise CheckpointError(
                f"checkpoint {ckpt} was trained with optimizer={saved_opt!r}, this run uses "
                f"{self.config.optimizer!r}; resume with the same optimizer or start fresh"
            )
        self._load_optimizer_state(ckpt_io.read_torch(ckpt, "optimizer.pt"))
        self.scheduler.load_state_dict(ckpt_io.read_torch(ckpt, "scheduler.pt"))
        if self.scaler is not None and (ckpt / "scaler.pt").is_file():
            self.scaler.load_state_dict(ckpt_io.read_torch(ckpt, "scaler.pt"))
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.batches_in_epoch = int(state.get("batches_in_epoch", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        if self._resumable_data:
            data_state = state.get("data_state")
            if data_state is None and (ckpt / "data_state.pt").is_file():
                data_state = ckpt_io.read_torch(ckpt, "data_state.pt")
            if data_state is not None:
                self.train_data.load_state_dict(data_state)
        rank_file = f"rng_state_rank{self.dist.rank}.pt"
        if not (ckpt / rank_file).is_file():
            rank_file = "rng_state_rank0.pt"  # resumed on more ranks than were saved
        ckpt_io.restore_rng_state(ckpt_io.read_torch(ckpt, rank_file))

    def full_model(self) -> nn.Module | None:
        """The whole trained model with plain tensors on rank 0 (None on the others): the module
        itself when every rank holds it whole (none, ddp), else a fresh copy filled from the
        gathered shards or stages (fsdp, tp, fsdp+tp, pp). Collective: call on every rank."""
        if self.strategy in ("none", "ddp"):
            return self.raw_model if self.dist.is_main else None
        state = self._full_model_state()
        if not self.dist.is_main:
            return None
        from lmkit.models.build import build_model

        model = build_model(self.raw_model.config)
        model.load_state_dict(state, strict=True)
        return model

    def save_checkpoint(self) -> Path | None:
        """Write out_dir/checkpoint-STEP atomically (collective: call on every rank)."""
        model_state = self._full_model_state()
        optim_state = self._full_optimizer_state()
        writer = ckpt_io.CheckpointWriter(self.out_dir, self.step)
        if self.dist.is_main:
            writer.prepare()
        D.barrier()
        writer.write_torch(f"rng_state_rank{self.dist.rank}.pt", ckpt_io.capture_rng_state())
        D.barrier()
        path = None
        if self.dist.is_main:
            writer.write_model(model_state, metadata={"step": str(self.step), "format": "pt"})
            writer.write_torch("optimizer.pt", optim_state)
            writer.write_torch("scheduler.pt", self.scheduler.state_dict())
            if self.scaler is not None:
                writer.write_torch("scaler.pt", self.scaler.state_dict())
            state: dict[str, Any] = {
                "step": self.step,
                "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "tokens_seen": self.tokens_seen,
                "world_size": self.dist.world_size,
                "strategy": self.strategy,
                "model_class": self.model_class,
                "model_config": self._model_config_dict(),
                "param_shapes": self.param_shapes,
                "train_config": self.config.to_dict(),
                "last_metrics": self.history[-1] if self.history else None,
            }
            if self._resumable_data:
                data_state = self.train_data.state_dict()
                if _jsonable(data_state):
                    state["data_state"] = data_state
                else:
                    writer.write_torch("data_state.pt", data_state)
            writer.write_json(ckpt_io.STATE_FILE, state)
            path = writer.commit(keep=self.config.keep_checkpoints)
        D.barrier()
        self._last_saved_step = self.step
        return path

    # ---- data ----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of training batches; restarts the iterable at each epoch end."""
        it = iter(self.train_data)
        if not self._resumable_data and self.batches_in_epoch:  # fast-forward after resume
            it = itertools.islice(it, self.batches_in_epoch, None)
        empty_passes = 0
        while True:
            got_any = False
            for batch in it:
                got_any = True
                self.batches_in_epoch += 1
                yield batch
            # a resumed position may sit exactly at an epoch's end: one empty pass is fine
            empty_passes = 0 if got_any else empty_passes + 1
            if empty_passes >= 2:
                raise ConfigError(
                    "train_data yielded no batches (empty data set, or fewer batches than "
                    "processes when sharded across ranks)"
                )
            self.epoch += 1
            self.batches_in_epoch = 0
            it = iter(self.train_data)

    # ---- one step ------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any], own: bool = False) -> torch.Tensor:
        """The model's loss, or ours from the logits (label smoothing; no targets at all,
        where a mean over zero tokens would be NaN and poison the accumulated gradients).
        Under tensor parallelism the logits stay split over the vocabulary (loss_parallel)."""
        with parallel_loss(self.layout.tensor_parallel):
            return self._loss_of(batch, own)

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel ranks (tensor-parallel ranks and stages hold the same numbers)."""
        if self.layout.data_world <= 1:
            return values
        return D.all_reduce_sum(values, group=self.layout.dp_group)

    def _loss_of(self, batch: dict[str, Any], own: bool) -> torch.Tensor:
        cfg = self.config
        if (own or cfg.label_smoothing > 0) and "labels" in batch:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            out = self.model(**inputs)
            loss = cross_entropy(
                out.logits, batch["labels"], label_smoothing=cfg.label_smoothing, shift=cfg.shift_labels
            )
            if getattr(out, "aux_loss", None) is not None:
                loss = loss + out.aux_loss
            return loss
        out = self.model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None:
            raise ConfigError(
                "the model returned no loss: training batches need 'labels' (use -100 for "
                "positions that must not count)"
            )
        return loss

    def _sync_context(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch."""
        if last or self.strategy == "none":
            return contextlib.nullcontext()
        model = self.model._orig_mod if hasattr(self.model, "_orig_mod") else self.model
        if self.strategy == "ddp":
            return model.no_sync()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2

            @contextlib.contextmanager
            def no_sync():
                model.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    model.set_requires_gradient_sync(True)

            return no_sync()
        return contextlib.nullcontext()

    def _autocast_loss(self, batch: dict[str, Any], own: bool) -> torch.Tensor:
        with self._autocast():
            return self._loss(batch, own=own)

    def _backward(self, loss: torch.Tensor) -> None:
        with parallel_loss(self.layout.tensor_parallel):  # the backward of a vocabulary-parallel loss too
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _update(self) -> tuple[torch.Tensor, float]:
        """Clip the accumulated gradients, take the optimizer and scheduler steps; (grad norm, lr)."""
        cfg = self.config
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        if self.layout.tensor_parallel:  # DTensor and plain gradients side by side
            sum_partial_grads(self.raw_model, self.layout)
            grad_norm = clip_grad_norm(list(self.model.parameters()), max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    def meta_train_step(self, episodes: list[dict[str, Any]]) -> dict[str, float]:
        """One meta-update (TrainConfig.meta): inner loops on each episode's support batch, the
        Reptile / FOMAML pseudo-gradient (train/meta_learning.py) as the parameters' gradient,
        then the Trainer's optimizer step with its lr schedule and clipping."""
        from lmkit.train.meta_learning import meta_gradient, set_pseudo_gradient, trainable

        episodes = [to_device(e, self.device) for e in episodes]
        params = trainable(self.raw_model)
        with self._autocast():
            grads, loss = meta_gradient(self.raw_model, params, episodes, self.meta)
        self.raw_model.train()  # adapt() leaves the model in eval mode
        set_pseudo_gradient(params, grads)
        grad_norm, lr = self._update()
        tokens = sum(int(e["input_ids"].numel()) for e in episodes)
        self.tokens_seen += tokens
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens}

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer update over the given micro-batches; returns the step's metrics."""
        if self.pipeline is not None:
            return self._pipeline_step(micro_batches)
        cfg = self.config
        if self.meta is not None:
            return self.meta_train_step(micro_batches)
        world = self.data_world
        batches = [to_device(b, self.device) for b in micro_batches]
        counts = [
            count_targets(b["labels"], cfg.shift_labels) if "labels" in b else 1 for b in batches
        ]
        tokens = sum(int(b["input_ids"].numel()) if "input_ids" in b else 0 for b in batches)
        totals = self._reduce(torch.tensor([float(sum(counts)), float(tokens)], dtype=torch.float64))
        n_global, tokens_global = totals[0].item(), int(totals[1].item())
        if cfg.loss_weighting == "token":
            weights = [c * world / max(n_global, 1.0) for c in counts]
        else:
            weights = [1.0 / len(batches)] * len(batches)

        loss_sum = torch.zeros((), dtype=torch.float64)
        adv_losses = []
        for i, batch in enumerate(batches):
            with self._sync_context(last=i == len(batches) - 1):
                if self.adversary is not None:  # clean + perturbed passes (train/adversarial.py)
                    loss, adv = self.adversary.step(
                        lambda b=batch, own=counts[i] == 0: self._autocast_loss(b, own), self._backward,
                        weights[i], batch.get("attention_mask"),
                    )
                    adv_losses.append(float(adv))
                else:
                    with self._autocast():
                        loss = self._loss(batch, own=counts[i] == 0)
                    scaled = loss * weights[i]
                    if self.penalty is not None and i == len(batches) - 1:  # once per step, inside the synced backward
                        penalty_value = self.penalty(self.raw_model)
                        scaled = scaled + penalty_value
                    self._backward(scaled)
            loss = loss.detach()
            loss = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
            loss_sum += loss.double().cpu() * (counts[i] if cfg.loss_weighting == "token" else 1.0)

        grad_norm, lr = self._update()

        loss_total = self._reduce(loss_sum.reshape(1))[0].item()
        if cfg.loss_weighting == "token":
            step_loss = loss_total / max(n_global, 1.0)
        else:
            step_loss = loss_total / (len(batches) * world)
        self.tokens_seen += tokens_global
        metrics = {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_global}
        if self.penalty is not None:
            metrics["penalty"] = float(penalty_value.detach())
        if adv_losses:
            metrics["adv_loss"] = sum(adv_losses) / len(adv_losses)
        return metrics

    def _pipeline_rows(self, micro_batches: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's micro-batches as one batch of whole rows, which the schedule cuts again."""
        batches = [to_device(b, self.device) for b in micro_batches]
        for b in batches:
            extra = set(b) - {"input_ids", "labels", "attention_mask"}
            mask = b.get("attention_mask")
            if extra or "labels" not in b or (mask is not None and not bool(mask.bool().all())):
                raise ConfigError(
                    "pipeline parallelism passes only input_ids between stages: batches need input_ids and "
                    f"labels of whole rows (no padding, no {sorted(extra) or 'other keys'}); use packed pretraining data"
                )
        return torch.cat([b["input_ids"] for b in batches]), torch.cat([b["labels"] for b in batches])

    def _pipeline_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One update through the pipeline schedule (train/pipeline_parallel.py): the stages of
        one pipeline get the same rows (this dp rank's); the last computes the loss, each updates
        its own layers (DDP / FSDP inside the stage average their gradients over dp)."""
        cfg = self.config
        ids, labels = self._pipeline_rows(micro_batches)
        totals = self._reduce(torch.tensor([float(count_targets(labels, cfg.shift_labels)), float(ids.numel())],
                                           dtype=torch.float64))
        n_global, tokens_global = max(totals[0].item(), 1.0), int(totals[1].item())
        # the dp average of the gradients divides by data_world: each rank's share is scaled up by it
        self._pp_denominator[0] = n_global / self.data_world
        with self._autocast():
            losses = self.pipeline.step(ids, labels)
        mine = sum(float(loss.detach()) for loss in losses)  # zero except on the last stage
        mine = D.all_reduce_sum(torch.tensor([mine], dtype=torch.float64), group=self.pipeline.group)
        step_loss = self._reduce(mine)[0].item() / self.data_world
        sum_partial_grads(self.raw_model, self.layout)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = pipeline_parallel.clip_grad_norm(list(self.raw_model.parameters()), max_norm,
                                                     group=self.pipeline.group)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += tokens_global
        return {"loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_global}

    @torch.no_grad()
    def _pipeline_evaluate(self) -> tuple[float, int]:
        """This dp rank's summed token loss (gathered from its last stage) and target count."""
        loss_sum, n_sum = 0.0, 0
        self._pp_denominator[0] = 1.0  # summed token losses
        for batch in itertools.islice(iter(self.eval_data), self.config.eval_steps or None):
            ids, labels = self._pipeline_rows([batch])
            with self._autocast():
                losses = self.pipeline.evaluate(ids, labels)
            loss_sum += sum(float(loss) for loss in losses)
            n_sum += count_targets(labels, self.config.shift_labels)
        total = D.all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64), group=self.pipeline.group)
        return total[0].item(), n_sum

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token cross-entropy on eval_data and perplexity = exp(mean token loss)."""
        if self.eval_data is None:
            raise ConfigError("evaluate() needs eval_data")
        self.model.eval()
        loss_sum, n_sum = 0.0, 0
        limit = self.config.eval_steps or None
        try:
            if self.pipeline is not None:
                loss_sum, n_sum = self._pipeline_evaluate()
                limit = 0
            for batch in itertools.islice(iter(self.eval_data), limit):
                batch = to_device(batch, self.device)
                labels = batch.get("labels")
                if labels is None:
                    raise ConfigError("eval batches need 'labels'")
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with self._autocast(), parallel_loss(self.layout.tensor_parallel):
                    out = self.model(**inputs)
                    loss = cross_entropy(out.logits, labels, shift=self.config.shift_labels, reduction="sum")
                loss_sum += (loss.full_tensor() if hasattr(loss, "full_tensor") else loss).item()
                n_sum += count_targets(labels, self.config.shift_labels)
        finally:
            self.model.train()
        totals = self._reduce(torch.tensor([loss_sum, float(n_sum)], dtype=torch.float64))
        mean = totals[0].item() / max(totals[1].item(), 1.0)
        return {"eval_loss": mean, "eval_ppl": math.exp(mean) if mean < 700 else float("inf"), "eval_tokens": int(totals[1].item())}

    # ---- the loop ----------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self._stop_requested:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Run to config.max_steps (or stop after step `until`; the lr schedule still spans
        max_steps) and save a checkpoint at the end. Returns this call's per-step records."""
        cfg = self.config
        stop_at = cfg.max_steps if until is None else min(until, cfg.max_steps)
        from lmkit.progress import Progress

        bar = Progress(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                       progress=cfg.progress if self.dist.is_main else False)
        previous = self._install_signal_handlers()
        records: list[dict[str, Any]] = []
        stream = self._batches()
        t_last, tokens_since = time.perf_counter(), 0
        try:
            while self.step < stop_at:
                per_step = self.meta.tasks_per_step if self.meta is not None else cfg.grad_accum_steps
                micro = [next(stream) for _ in range(per_step)]
                progress = getattr(self.raw_model, "set_training_progress", None)
                if callable(progress):  # e.g. DANN's gradient-reversal schedule (train/domain_adversarial.py)
                    progress(self.step / cfg.max_steps)
                metrics = self.train_step(micro)
                self.step += 1
                tokens_since += metrics.pop("tokens")
                record: dict[str, Any] = {"step": self.step, **metrics}
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    now = time.perf_counter()
                    record["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
                    t_last, tokens_since = now, 0
                if self.eval_data is not None and cfg.eval_every and (
                    self.step % cfg.eval_every == 0 or self.step == cfg.max_steps
                ):
                    record.update(self.evaluate())
                    t_last = time.perf_counter()  # eval time is not training throughput
                record["epoch"] = self.epoch
                self.history.append(record)
                records.append(record)
                if self.step % cfg.log_every == 0 or "eval_loss" in record or self.step == cfg.max_steps:
                    self.logger.log(record)
                bar.set_postfix(loss=metrics["loss"], lr=metrics["lr"])
                bar.update(1)
                stop = self._stop_requested
                if self.dist.is_distributed:  # every rank must agree to stop (collective saves)
                    stop = bool(D.all_reduce_sum(torch.tensor([float(stop)], dtype=torch.float64))[0].item())
                if (cfg.save_every and self.step % cfg.save_every == 0) or stop:
                    self.save_checkpoint()
                if stop:
                    break
            if self._last_saved_step != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
            for sig, h in previous.items():
                signal.signal(sig, h)
            self.logger.close()
        return records
