"""Pipeline parallelism for lmkit decoders on torch.distributed.pipelining.

The model is cut by layer into `pp` stages, one per process: stage 0 holds the token (and
position) embeddings and the first blocks, the last stage the last blocks, the final norm and
the LM head. A step splits the batch into micro-batches; the schedule streams them through
the stages, sending the hidden states [micro_batch, T, d_model] forward and their gradients
back (GPipe: every forward, then every backward; 1F1B: one forward one backward once the
pipe is full, so a stage keeps at most `pp` micro-batches of activations instead of all of
them). The idle "bubble" is (pp - 1) / (micro_batches + pp - 1) of a step with either
schedule, so use several micro-batches per stage.

The engine is torch's (`PipelineStage`, `ScheduleGPipe`, `Schedule1F1B`); this file only
says which layers go where, and keeps every parameter's name as in the whole model
(``layers.3.mlp.up_proj.weight`` stays that on stage 1), so checkpoints and optimizer state
from a pipelined run line up with an unsplit one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmkit.errors import ConfigError

SCHEDULES = ("gpipe", "1f1b")


def check_pipeline_parallel(config, pp: int) -> None:
    """Refuse models that cannot be cut into `pp` stages, naming the field."""
    if pp < 1:
        raise ConfigError(f"pipeline-parallel degree must be >= 1, got {pp}")
    if config.n_layers < pp:
        raise ConfigError(f"n_layers={config.n_layers} is fewer than the {pp} pipeline stages")
    if pp > 1 and config.tie_embeddings:
        raise ConfigError("pipeline parallelism needs untied embeddings (tie_embeddings=False): "
                          "the embedding lives on the first stage and the LM head on the last")
    if getattr(config, "n_experts", 0):
        raise ConfigError("pipeline parallelism of MoE models is not supported (their load-balancing loss "
                          "would be lost between stages); use FSDP")


def stage_layers(n_layers: int, pp: int, stage: int) -> range:
    """The contiguous block indices of `stage`: an even split, the first stages taking one
    more when it does not divide."""
    per, extra = divmod(n_layers, pp)
    start = stage * per + min(stage, extra)
    return range(start, start + per + (stage < extra))


class DecoderStage(nn.Module):
    """Blocks `layers` of a DecoderLM; with `first` also the embeddings, with `last` also
    the final norm and LM head. Stage 0 takes input_ids [B, T]; the others hidden states
    [B, T, d_model]; the last returns logits [B, T, V], the others hidden states.

    Each stage recomputes the positions and RoPE tables from T (sequences are whole rows:
    no padding mask, the usual case in pretraining), so only one tensor crosses a boundary.
    """

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        check_pipeline_parallel(model.config, 1)
        self.config = model.config
        self.position = model.position
        self.first, self.last = first, last
        skip = {"layers"} | (set() if first else {"embed_tokens", "embed_positions"}) | (
            set() if last else {"norm", "lm_head"})
        for name, child in model.named_children():
            if name not in skip:
                self.add_module(name, child)
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layers})
        self.gradient_checkpointing = getattr(model, "gradient_checkpointing", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lmkit.models.block import run_layers
        from lmkit.models.decoder import DecoderLM, default_position_ids
        from lmkit.models.softcap import soft_cap

        b, t = x.shape[:2]
        position_ids = default_position_ids(b, t, 0, x.device)
        h = DecoderLM._embed(self, x, position_ids) if self.first else x
        per_layer = DecoderLM._layer_inputs(self, 0, t, h, position_ids, None, None, None)
        h, _ = run_layers(list(self.layers.values()), h, checkpointing=self.gradient_checkpointing and self.training,
                          per_layer=[per_layer[int(i)] for i in self.layers], token_mask=None)
        if not self.last:
            return h
        logits = self.lm_head(self.norm(h))
        if self.config.final_logit_softcapping is not None:
            logits = soft_cap(logits, self.config.final_logit_softcapping)
        return logits

    # DecoderLM._attention_bias is reached through _layer_inputs with this stage as `self`
    def _attention_bias(self, *args):
        from lmkit.models.decoder import DecoderLM

        return DecoderLM._attention_bias(self, *args)


def split_model(model: nn.Module, pp: int, stage: int) -> DecoderStage:
    """This process's stage of `model` (every process built the same whole model)."""
    check_pipeline_parallel(model.config, pp)
    return DecoderStage(model, stage_layers(model.config.n_layers, pp, stage), stage == 0, stage == pp - 1)


class Pipeline:
    """One process's part of a pipeline-parallel model: its `DecoderStage` (`module`, whose
    parameters the optimizer updates) and the schedule that runs a step across the stages.

    `loss_fn(logits, labels)` is called on the last stage for every micro-batch and its result
    back-propagated as it is (no division by the number of micro-batches): give it the
    micro-batch's share of the step's loss, e.g. its summed token losses over the step's
    target count, and the gradients equal one process's on the whole batch.

    `wrap(stage) -> module` puts data parallelism around the stage (DDP, or `fully_shard` in
    place) before the schedule sees it; torch's stage then syncs gradients on the last
    micro-batch only. `module` stays the unwrapped stage (whole-model parameter names).
    """

    def __init__(self, model: nn.Module, group, n_microbatches: int, schedule: str = "1f1b",
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | None = None,
                 wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        import torch.distributed as dist
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if schedule not in SCHEDULES:
            raise ConfigError(f"pipeline schedule {schedule!r}: choose one of {SCHEDULES}")
        pp, stage = dist.get_world_size(group), dist.get_rank(group)
        if n_microbatches < pp and schedule == "1f1b":
            raise ConfigError(f"the 1F1B schedule needs at least as many micro-batches ({n_microbatches}) "
                              f"as stages ({pp})")
        self.pp, self.stage_index, self.group = pp, stage, group
        self.module = split_model(model, pp, stage)
        self.is_first, self.is_last = stage == 0, stage == pp - 1
        self.n_microbatches = n_microbatches
        self.stage = PipelineStage(wrap(self.module) if wrap else self.module, stage, pp,
                                   device or torch.device("cpu"), group=group)
        kind = Schedule1F1B if schedule == "1f1b" else ScheduleGPipe
        self.schedule = kind(self.stage, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Forward and backward of one batch (split into micro-batches along dim 0); call on
        every stage with the same batch. Returns the micro-batch losses on the last stage, [] elsewhere."""
        return self._run(self.schedule.step, input_ids, labels)

    def evaluate(self, input_ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Forward only (the schedule's eval); the micro-batch losses on the last stage, [] elsewhere."""
        return self._run(self.schedule.eval, input_ids, labels)

    def _run(self, run, input_ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        if input_ids.shape[0] % self.n_microbatches:
            raise ConfigError(f"a batch of {input_ids.shape[0]} rows does not split into "
                              f"{self.n_microbatches} equal micro-batches")
        losses: list[torch.Tensor] = []
        args = (input_ids,) if self.is_first else ()
        run(*args, target=labels if self.is_last else None, losses=losses if self.is_last else None,
            return_outputs=False)  # the last stage would keep every micro-batch's logits otherwise
        return losses


def clip_grad_norm(parameters, max_norm: float, group=None) -> torch.Tensor:
    """Clip by the norm of the whole model's gradient when each stage holds some of it: the
    squared norms of the stages are summed over `group` (default: all ranks) before the root."""
    import torch.distributed as dist

    from lmkit.train.tensor_parallel import clip_grad_norm as clip

    ready = dist.is_available() and dist.is_initialized()
    return clip(parameters, max_norm, partial_over=(group or dist.group.WORLD) if ready else None)
