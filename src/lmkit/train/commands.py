"""CLI: `lmkit memory` (training-memory estimate) and `lmkit pretrain` (from a config file;
`--init-from` continues pretraining a checkpoint)."""

from __future__ import annotations

import click

from lmkit.cli_grammar import progress_flags


@click.command("memory")
@click.argument("model", required=False)
@click.option("--params", "n_params", type=float, default=None, help="parameter count, e.g. 7e9 (instead of MODEL)")
@click.option("--layers", type=int, default=None, help="number of layers (with --params)")
@click.option("--hidden", type=int, default=None, help="d_model / hidden_size (with --params)")
@click.option("--heads", type=int, default=None, help="attention heads (default hidden/128)")
@click.option("--ffn", type=int, default=None, help="FFN inner size (default 8/3 hidden, SwiGLU)")
@click.option("--vocab", type=int, default=None, help="vocabulary size (default 32000)")
@click.option("--seq", type=int, default=2048, show_default=True, help="sequence length")
@click.option("--batch", type=int, default=1, show_default=True, help="micro-batch size per device")
@click.option("--method", type=click.Choice(["full", "lora", "qlora"]), default="full", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "mixed", "autocast"]), default="mixed", show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd", "momentum"]), default="adamw", show_default=True)
@click.option("--checkpointing/--no-checkpointing", default=False, help="gradient checkpointing (recompute)")
@click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True, help="ZeRO stage")
@click.option("--devices", type=click.IntRange(1), default=1, show_default=True,
              help="data-parallel devices (with --tp/--pp: the dp degree; --zero 3 for FSDP)")
@click.option("--tp", type=click.IntRange(1), default=1, show_default=True, help="tensor-parallel degree")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True, help="pipeline-parallel stages")
@click.option("--sp/--no-sp", "sp", default=False, help="sequence parallelism (with --tp)")
@click.option("--microbatches", type=click.IntRange(0), default=0, show_default=True,
              help="pipeline micro-batches per step (0: --pp); --batch is then the rows per step")
@click.option("--schedule", type=click.Choice(["1f1b", "gpipe"]), default="1f1b", show_default=True,
              help="pipeline schedule")
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True, help="comma-separated module names")
@click.option("--unit", type=click.Choice(["GB", "GiB", "MB", "MiB"]), default="GB", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the estimate as JSON")
def memory_cmd(model, n_params, layers, hidden, heads, ffn, vocab, seq, batch, method, precision, optimizer,
               checkpointing, zero, devices, tp, pp, sp, microbatches, schedule, lora_rank, lora_targets, unit,
               as_json) -> None:
    """Estimate training memory per device for MODEL (a preset such as llama-7b, or a
    config.json) or for --params N with --layers/--hidden: weights, gradients, optimizer
    states and activations. With --tp/--pp/--sp: per process of that layout (its busiest
    pipeline stage)."""
    import json as _json

    from lmkit.models.config import ModelConfig
    from lmkit.train.memory import PRESETS, config_for_memory, estimate_memory

    config = None
    if model:
        config = config_for_memory(model)
    elif layers and hidden:
        h = hidden
        config = ModelConfig(
            vocab_size=vocab or 32000, d_model=h, n_layers=layers, n_heads=heads or max(1, h // 128),
            d_ff=ffn or int(round(8 * h / 3 / 256)) * 256 or 4 * h, max_seq_len=max(seq, 1),
        )
    elif n_params is None:
        raise click.UsageError(f"give MODEL (a preset: {', '.join(sorted(PRESETS))}; or a config.json) or --params N")
    if tp > 1 or pp > 1 or sp:
        if config is None or method != "full" or zero not in (0, 3):
            raise click.UsageError("--tp/--pp/--sp need a model shape (MODEL or --layers/--hidden), "
                                   "--method full and --zero 0 (DDP over --devices) or 3 (FSDP over --devices)")
        from dataclasses import replace

        from lmkit.train.parallel_memory import estimate_parallel_memory

        est = estimate_parallel_memory(
            replace(config, tie_embeddings=False), batch=batch, seq=seq, precision=precision, optimizer=optimizer,
            tp=tp, pp=pp, sequence_parallel=sp, microbatches=microbatches, schedule=schedule,
            checkpointing=checkpointing, dp=devices, fsdp=zero == 3,
        )
        if as_json:
            click.echo(_json.dumps(est.to_dict(), indent=2))
            return
        d = est.details
        mesh = (f"dp={devices}{' (FSDP)' if zero == 3 else ''} x " if devices > 1 else "") + f"tp={tp} x pp={pp}"
        click.echo(f"per process of {mesh}{' with sequence parallelism' if sp else ''}: the busiest is "
                   f"pipeline stage {d['stage']} ({d['layers_on_stage']} layers, {d['in_flight']} micro-batch(es) "
                   f"of {d['micro_batch']} rows in flight, {schedule})")
        click.echo(est.table(unit))
        return
    est = estimate_memory(
        config, n_params=int(n_params) if n_params else None, batch=batch, seq=seq, method=method,
        precision=precision, optimizer=optimizer, checkpointing=checkpointing, zero=zero, devices=devices,
        lora_rank=lora_rank, lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
    )
    if as_json:
        click.echo(_json.dumps(est.to_dict(), indent=2))
    else:
        click.echo(est.table(unit))


@click.command("pretrain")
@progress_flags
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON: data, tokenizer, objective (clm|mlm|span|prefix), model, seq_len, batch_size, train")
@click.option("--resume", is_flag=True, help="continue from the latest checkpoint in train.out_dir")
@click.option("--init-from", "init_from", default=None, type=click.Path(exists=True, file_okay=False),
              help="continued pretraining: start from this Hugging Face checkpoint (docs/continual-pretraining.md)")
@click.option("--data", "data", default=None, type=click.Path(exists=True, file_okay=False),
              help="with --init-from and no --config: the domain shard directory (made with the checkpoint's tokenizer)")
@click.option("--general-data", default=None, type=click.Path(exists=True, file_okay=False),
              help="with --init-from: shard directory of the general data (replay, EWC, forgetting measurement)")
@click.option("--replay-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="with --init-from: fraction of training sequences replayed from --general-data")
@click.option("--penalty", type=click.Choice(["none", "ewc", "l2sp"]), default=None,
              help="with --init-from: weight penalty towards the starting weights")
@click.option("--penalty-weight", type=click.FloatRange(0), default=None, help="lambda of --penalty")
@click.option("--new-rows-from", "new_rows_from", type=click.IntRange(0), default=None,
              help="with --init-from: train only the embedding / LM-head rows from this id up (after lmkit tokenizer expand)")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="without --config: optimizer steps")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="without --config: peak learning rate (re-warmed up over the first 5 % of the steps)")
@click.option("--seq-len", type=click.IntRange(2), default=None, help="without --config: tokens per sequence "
              "(default: the checkpoint's context, at most 256)")
@click.option("--batch-size", type=click.IntRange(2), default=8, show_default=True, help="without --config: sequences per step")
@click.option("-o", "--out", "out", default=None, type=click.Path(file_okay=False),
              help="without --config: run directory (default runs/continued); the model is written to OUT/hf")
def pretrain(config_path: str | None, resume: bool, init_from: str | None, data: str | None,
             general_data: str | None, replay_ratio: float | None, penalty: str | None,
             penalty_weight: float | None, new_rows_from: int | None, steps: int, lr: float, seq_len: int | None, batch_size: int,
             out: str | None) -> None:
    """Pretrain a model from a config file (see docs/training.md), or continue pretraining a
    checkpoint (--init-from) with replay and EWC / L2-SP against forgetting; without --config,
    --init-from and --data are enough (docs/continual-pretraining.md)."""
    import dataclasses

    from lmkit.train.pretrain import PretrainConfig, run_pretrain

    if config_path:
        cfg = PretrainConfig.load(config_path)
    elif init_from and data:
        cfg = _continued_config(init_from, data, steps, lr, seq_len, batch_size, out or "runs/continued")
    else:
        raise click.UsageError("give --config FILE, or --init-from CHECKPOINT with --data SHARDS")
    continual = dict(cfg.continual)
    for key, value in (("general_data", general_data), ("replay_ratio", replay_ratio), ("penalty", penalty),
                       ("penalty_weight", penalty_weight), ("new_rows_only_from", new_rows_from)):
        if value is not None:
            continual[key] = value
    if init_from or continual != cfg.continual:
        cfg = dataclasses.replace(cfg, init_from=init_from or cfg.init_from, continual=continual)
    result = run_pretrain(cfg, resume=resume)
    click.echo(f"eval loss {result['eval_loss']:.4f}  perplexity {result['eval_ppl']:.2f}")
    if "general_ppl_before" in result:
        click.echo(f"general perplexity {result['general_ppl_before']:.2f} -> {result['general_ppl_after']:.2f} "
                   f"(forgetting); domain perplexity {result['domain_ppl_before']:.2f} -> {result['eval_ppl']:.2f}")
    if "export_dir" in result:
        click.echo(f"Hugging Face checkpoint: {result['export_dir']}")


def _continued_config(init_from: str, data: str, steps: int, lr: float, seq_len: int | None, batch_size: int,
                      out: str):
    """A PretrainConfig for continued causal-LM pretraining of the checkpoint `init_from`: its
    tokenizer (tokenizer.json or tokenizer.lmkit.json), its context (at most 256) by default."""
    import json
    from pathlib import Path

    from lmkit.train.pretrain import PretrainConfig

    src = Path(init_from)
    tok = next((src / n for n in ("tokenizer.lmkit.json", "tokenizer.json") if (src / n).is_file()), None)
    if tok is None:
        raise click.UsageError(f"{src} has no tokenizer.json: give --config with a tokenizer")
    if seq_len is None:
        hf = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").is_file() else {}
        seq_len = min(256, int(hf.get("max_position_embeddings") or hf.get("n_positions") or 256))
    return PretrainConfig(data=data, tokenizer=str(tok), seq_len=seq_len, batch_size=batch_size, init_from=init_from,
                          train={"max_steps": steps, "lr": lr, "out_dir": out, "eval_steps": 50})


COMMANDS: list[click.Command] = [memory_cmd, pretrain]
