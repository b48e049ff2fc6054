"""Training memory per process under tensor, sequence and pipeline parallelism.

Built on train/memory.py's counts (same bytes per parameter, same activation tensors), with
what each layout keeps on one process:

  TP (degree t)   q/k/v/o, gate/up/down, the embedding and the LM head are split t ways, so
                  their weights, gradients and optimizer states are 1/t; the norms are
                  replicated. Activations split with them: q, k, v, attention output, the
                  FFN's d_ff-wide tensors and the (vocabulary-parallel) log-softmax are 1/t;
                  the norms' inputs/outputs and the residual stream stay whole. loss_parallel
                  keeps the sharded logits beside their log-softmax.
  SP (with TP)    the norms and the residual stream keep 1/t of the sequence too; only the
                  Linears' gathered inputs stay whole.
  PP (degree p)   a stage holds its layers (stage_layers: an even split), the first also the
                  embedding, the last the final norm and the LM head. Activations are those
                  of one micro-batch times the micro-batches in flight on that stage: all of
                  them with GPipe, at most p - stage with 1F1B, each with the stage's output
                  (hidden states sent on; logits on the last stage) kept for its backward.
  PP x TP         as both; the LM head gathers the full logits for the pipeline's loss (no
                  loss_parallel), so the last stage keeps [micro, seq, vocab] logits whole.
  DP (degree d)   replicas (DDP) keep everything above; with FSDP (ZeRO-3, `fsdp`) weights,
                  gradients and optimizer states are 1/d, plus one block gathered whole at a time.

The figure for a layout is its busiest process (the largest phase-aware peak over the stages);
`MemoryEstimate.details["stage"]` names it. Full fine-tuning without ZeRO only.
"""

from __future__ import annotations

import dataclasses

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.train.memory import (
    _STATE_BYTES,
    PRECISIONS,
    MemoryEstimate,
    ParamCount,
    activation_bytes,
    linear_shapes,
)
from lmkit.train.pipeline_parallel import stage_layers


def tp_shard_config(config: ModelConfig, tp: int, n_layers: int | None = None) -> ModelConfig:
    """The shapes one tensor-parallel rank computes with: 1/tp of the heads, d_ff and vocabulary."""
    for name in ("n_heads", "n_kv_heads", "d_ff", "vocab_size"):
        if getattr(config, name) % tp:
            raise ConfigError(f"{name}={getattr(config, name)} is not divisible by tp={tp}")
    return dataclasses.replace(
        config, n_heads=config.n_heads // tp, n_kv_heads=config.n_kv_heads // tp, d_ff=config.d_ff // tp,
        vocab_size=config.vocab_size // tp, head_dim=config.head_dim, n_layers=n_layers or config.n_layers,
    )


def estimate_parallel_memory(
    config: ModelConfig,
    *,
    batch: int,
    seq: int,
    precision: str = "mixed",
    optimizer: str = "adamw",
    tp: int = 1,
    pp: int = 1,
    sequence_parallel: bool = False,
    microbatches: int = 0,
    schedule: str = "1f1b",
    checkpointing: bool = False,
    stage: int | None = None,
    dp: int = 1,
    fsdp: bool = False,
) -> MemoryEstimate:
    """Per-process training memory of the busiest process (or of pipeline `stage`).

    batch: rows per step on one pipeline, i.e. per dp rank (with pp > 1 cut into `microbatches`,
    default pp). dp: data-parallel degree; it changes the figure only with `fsdp`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: must be one of {PRECISIONS}")
    if tp < 1 or pp < 1 or dp < 1:
        raise ConfigError(f"dp={dp}, tp={tp} and pp={pp} must be >= 1")
    if sequence_parallel and tp == 1:
        raise ConfigError("sequence_parallel needs tp > 1")
    if config.tie_embeddings and (tp > 1 or pp > 1):
        raise ConfigError("tensor and pipeline parallelism need untied embeddings (tie_embeddings=False)")
    if config.n_layers < pp:
        raise ConfigError(f"n_layers={config.n_layers} is fewer than pp={pp} stages")
    if schedule not in ("1f1b", "gpipe"):
        raise ConfigError(f"schedule={schedule!r}: must be '1f1b' or 'gpipe'")
    n_micro = (microbatches or pp) if pp > 1 else 1
    if batch % n_micro:
        raise ConfigError(f"batch={batch} does not split into {n_micro} micro-batches")
    stages = [stage] if stage is not None else list(range(pp))
    estimates = [_stage_estimate(config, s, batch // n_micro, seq, precision, optimizer, tp, pp,
                                 sequence_parallel, n_micro, schedule, checkpointing, dp if fsdp else 1)
                 for s in stages]
    return max(estimates, key=lambda e: e.peak)


def _stage_estimate(config, stage, micro, seq, precision, optimizer, tp, pp, sp, n_micro, schedule,
                    checkpointing, shards: int = 1) -> MemoryEstimate:
    layers = stage_layers(config.n_layers, pp, stage)
    first, last = stage == 0, stage == pp - 1
    shard = tp_shard_config(config, tp, len(layers))
    counts = ParamCount.of(shard)
    vh = shard.vocab_size * shard.d_model
    norm_size = shard.d_model * (2 if shard.norm == "layernorm" and shard.norm_bias else 1)
    params = counts.total - (0 if first else vh) - (0 if last else vh + norm_size)
    w_b, g_b, o_b = _STATE_BYTES[precision][optimizer]
    master_b = 4 if precision in ("fp32", "mixed", "autocast") else 2
    cache = (counts.layer_linear + (vh if last else 0)) * 2 if precision == "autocast" else 0.0
    weights, grads, states = params * w_b / shards, params * g_b / shards, params * o_b / shards
    # FSDP gathers one block's weights (and later its gradients) whole while it runs
    gathered = (params / max(len(layers), 1)) * w_b * (shards - 1) / shards if shards > 1 else 0.0
    largest = max([vh] * (first or last) + [i * o for i, o in linear_shapes(shard).values()])
    update_temp = (2 if optimizer == "adamw" else 1) * largest * master_b

    residual = 2 if precision in ("bf16", "mixed") else 4
    act = activation_bytes(shard, micro, seq, precision, checkpointing=checkpointing,
                           sequence_shards=tp if sp else 1)
    in_flight = n_micro if schedule == "gpipe" else min(pp - stage, n_micro)
    always = act["outside"] - _head_bytes(shard, micro, seq, precision)  # ids, RoPE tables
    outside = act["outside"] if last else always
    e = 2 if precision in ("bf16", "mixed", "autocast") else 4
    head_vocab = shard.vocab_size
    if last and tp > 1 and pp > 1:  # the head gathers the full logits; the loss's log-softmax is whole too
        head_vocab = config.vocab_size
        outside += (_head_bytes(dataclasses.replace(shard, vocab_size=head_vocab), micro, seq, precision)
                    - _head_bytes(shard, micro, seq, precision))
    elif last and tp > 1:  # loss_parallel keeps the vocabulary-sharded logits as well as their log-softmax
        outside += micro * seq * shard.vocab_size * 4
    # the stage keeps each in-flight micro-batch's output for its backward: logits, or the hidden states it sent
    kept_output = micro * seq * (head_vocab * e if last else shard.d_model * residual) if pp > 1 else 0
    saved = in_flight * (act["layers"] + outside + kept_output)
    transient = act["logits_transient"] if last else micro * seq * shard.d_model * residual  # d(loss) or the received grad
    block_backward = act["phase2"] - act["layers"] - always
    phase1 = saved + transient
    phase2 = saved + block_backward
    head_grad = vh * g_b if last else 0.0
    head_grad = head_grad / shards
    peak = weights + states + max(cache + phase1 + gathered, cache + phase2 + head_grad + 2 * gathered,
                                  grads + update_temp / shards)
    details = {"stage": stage, "fsdp_shards": shards, "layers_on_stage": len(layers), "micro_batch": micro, "in_flight": in_flight,
               "activations_per_micro_batch": act["layers"] + outside, "update_temporaries": update_temp}
    if cache:
        details["autocast_weight_cache"] = cache
    return MemoryEstimate(
        weights=weights + cache, gradients=grads, optimizer_states=states, activations=max(phase1, phase2),
        params_total=params, params_trainable=params, method="full", precision=precision, optimizer=optimizer,
        zero=3 if shards > 1 else 0, devices=tp * pp * shards, checkpointing=checkpointing, batch=micro * n_micro, seq=seq, details=details,
        peak=peak,
    )


def _head_bytes(cfg: ModelConfig, micro: int, seq: int, precision: str) -> float:
    """What the final norm, the LM head and the log-softmax save (the last stage only)."""
    from lmkit.train.memory import _norm_bytes

    e = 2 if precision in ("bf16", "mixed", "autocast") else 4
    norm_x, _ = _norm_bytes(cfg, precision, weight_trainable=True)
    return micro * seq * cfg.d_model * (norm_x + e) + micro * (seq - 1) * cfg.vocab_size * 4
