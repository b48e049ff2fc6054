"""`lmkit prune` and `lmkit distill`: shrink a Hugging Face-format model directory.

    lmkit prune MODEL_DIR -o OUT --sparsity 0.5 --method magnitude|global|2:4 \
        [--finetune-steps 200 --data SHARDS] [--n-prunes 4 --prune-every 50]
    lmkit distill TEACHER_DIR SHARDS --student-preset llama-tiny [--student-override d_model=64] \
        -o OUT --steps 500 [--temperature 1 --alpha 0.5]

SHARDS is a directory written by `lmkit data prepare` with the model's tokenizer (its
validation split, if any, gives the held-out perplexity that is reported).
"""

from __future__ import annotations

import click


def _loaders(data: str, config, seq_len: int, batch_size: int, seed: int):
    """(train loader, val loader or None) over a shard directory, for a model with `config`."""
    from lmkit.data.packing import PackedDataset, PackedLoader
    from lmkit.data.shards import TokenShards
    from lmkit.errors import ConfigError, LmkitError

    from lmkit.cli_grammar import check_fits_context

    vocab_size = config.vocab_size
    check_fits_context("--seq-len", seq_len, config.max_seq_len)

    train = TokenShards(data, "train")
    if train.vocab_size > vocab_size:
        raise ConfigError(
            f"the shards in {data} were made with a tokenizer of {train.vocab_size} tokens but the "
            f"model has only {vocab_size}: prepare the data with the model's tokenizer"
        )
    train_loader = PackedLoader(PackedDataset(train, seq_len), batch_size, shuffle=True, seed=seed)
    try:
        val = TokenShards(data, "val")
        val_loader = PackedLoader(PackedDataset(val, seq_len), batch_size, shuffle=False, drop_last=False)
    except LmkitError:
        val_loader = None
    return train_loader, val_loader


def _save_with_tokenizer(model, out, src) -> None:
    """Save `model` to `out` with the tokenizer of checkpoint `src`, recording the end of turn
    (eos list, pad, chat template) when lmkit can write that tokenizer, else copying its files."""
    import shutil
    from pathlib import Path

    from lmkit.hub import save_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    tok = None
    if any((Path(src) / n).is_file() for n in ("tokenizer.json", "tokenizer.lmkit.json")):
        tok = load_tokenizer(src)
        tok = tok if hasattr(tok, "save_hf_json") else None
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "chat_template.jinja"):  # the checkpoint's own chat template stays
        if (Path(src) / name).is_file() and Path(src).resolve() != Path(out).resolve():
            shutil.copyfile(Path(src) / name, Path(out) / name)
    save_pretrained(model, out, tokenizer=tok)
    if tok is None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            p = Path(src) / name
            if p.is_file():
                shutil.copyfile(p, Path(out) / name)


class _RunDir:
    """--run-dir, or a temporary directory removed afterwards (checkpoints and metrics of the
    training run do not belong in the exported model directory)."""

    def __init__(self, path) -> None:
        self.path, self._tmp = path, None

    def __enter__(self) -> str:
        import tempfile

        if self.path:
            return str(self.path)
        self._tmp = tempfile.TemporaryDirectory(prefix="lmkit-compress-")
        return self._tmp.name

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


RUN_DIR = click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                       help="keep the training run (checkpoints, metrics.jsonl) here; default: a temporary directory")


def _train_config(out: str, lr: float, seed: int, steps: int = 1, warmup: int = 0):
    from lmkit.train.config import TrainConfig

    return TrainConfig(lr=lr, max_steps=max(steps, 1), warmup_steps=warmup, out_dir=out, seed=seed,
                       eval_steps=0, log_every=50, keep_checkpoints=1, min_lr_ratio=0.1)


@click.command("prune")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="directory for the pruned model")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="fraction of the target weights set to zero (N:M methods: N/M by construction)")
@click.option("--method", default="magnitude", show_default=True,
              help="magnitude (every layer to --sparsity), global (one threshold over all targets), N:M such as "
                   "2:4, or neurons (remove that fraction of every FFN's channels: a smaller dense model)")
@click.option("--targets", default=None, help="comma-separated module names (default q,k,v,o,gate,up,down_proj)")
@click.option("--finetune-steps", type=click.IntRange(0), default=0, show_default=True,
              help="fine-tune with the masks held fixed after the last pruning step (needs --data)")
@click.option("--n-prunes", type=click.IntRange(1), default=1, show_default=True,
              help="gradual pruning: this many steps on a cubic schedule (Zhu & Gupta)")
@click.option("--prune-every", type=click.IntRange(1), default=50, show_default=True,
              help="training steps between two pruning steps")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="shard directory (lmkit data prepare) for fine-tuning and held-out perplexity")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seq-len", type=click.IntRange(2), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@RUN_DIR
def prune_cmd(model_dir, out, sparsity, method, targets, finetune_steps, n_prunes, prune_every, data, lr,
              batch_size, seq_len, seed, run_dir) -> None:
    """Prune a model (magnitude, global, N:M or FFN neurons), optionally fine-tune, and save it."""
    from lmkit.compress.finetune import prune_and_finetune, prune_model
    from lmkit.compress.masks import format_report, remove_pruning, sparsity_report
    from lmkit.compress.nm_sparsity import parse_nm
    from lmkit.compress.schedule import PruneSchedule
    from lmkit.hub.pretrained import load_pretrained

    if ":" in method:
        n, m = parse_nm(method)
        sparsity = 1 - n / m
    if (finetune_steps or n_prunes > 1) and data is None:
        raise click.UsageError("--finetune-steps / --n-prunes > 1 need --data (a shard directory to train on)")
    model = load_pretrained(model_dir, dtype=None)
    n_before = _count(model)
    if data is not None:
        dtype = next(model.parameters()).dtype
        model = model.float()  # fine-tune with fp32 master weights, save in the original dtype
        train, val = _loaders(data, model.config, seq_len, batch_size, seed)
        sched = PruneSchedule(final_sparsity=sparsity, n_prunes=n_prunes, prune_every=prune_every,
                              finetune_steps=finetune_steps)
        with _RunDir(run_dir) as run:
            cfg = _train_config(run, lr, seed)
            result = prune_and_finetune(model, cfg, train, val, schedule=sched, method=method, targets=targets)
        model = model.to(device="cpu", dtype=dtype)
        if val is not None:
            click.echo(f"held-out perplexity: dense {result['dense']['eval_ppl']:.3f}  "
                       f"pruned {result['pruned']['eval_ppl']:.3f}  "
                       f"after fine-tuning {result['finetuned']['eval_ppl']:.3f}")
    else:
        prune_model(model, None if ":" in method else sparsity, method, targets)
    report = None if method == "neurons" else sparsity_report(model, targets)
    remove_pruning(model)
    _save_with_tokenizer(model, out, model_dir)
    if report is not None:
        click.echo(format_report(report))
    else:
        n_after = _count(model)
        click.echo(f"FFN width {model.config.d_ff}; parameters {n_before:,} -> {n_after:,} "
                   f"({1 - n_after / n_before:.1%} fewer)")
    click.echo(f"saved {out}")


def _count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _parse_overrides(items) -> dict:
    import json

    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--student-override")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@click.command("distill")
@click.argument("teacher_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.argument("data", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--teacher", "teacher_option", hidden=True, type=click.Path(exists=True, file_okay=False),
              help="the old spelling of TEACHER_DIR")
@click.option("--data", "data_option", hidden=True, type=click.Path(exists=True, file_okay=False),
              help="the old spelling of DATA")
@click.option("--student-preset", default=None, help="preset for the student, e.g. llama-tiny")
@click.option("--student-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file of ModelConfig fields for the student")
@click.option("--student-override", multiple=True, help="KEY=VALUE ModelConfig field (repeatable), e.g. d_model=64")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="directory for the student")
@click.option("--steps", type=click.IntRange(1), default=500, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="weight of the soft-target (KL) term; 1 - alpha weighs the hard-label cross-entropy")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seq-len", type=click.IntRange(2), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@RUN_DIR
def distill_cmd(teacher_dir, data, teacher_option, data_option, student_preset, student_config, student_override, out,
                steps, temperature, alpha, lr, batch_size, seq_len, seed, run_dir) -> None:
    """Train a small student on the soft targets of TEACHER_DIR (knowledge distillation) over DATA,
    a shard directory made with the teacher's tokenizer, and save it."""
    import json
    from pathlib import Path

    from lmkit.compress.distillation import distill
    from lmkit.errors import ConfigError
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.models.build import build_model
    from lmkit.models.config import ModelConfig
    from lmkit.models.presets import PRESETS
    from lmkit.train.trainer import set_seed

    from lmkit.cli_grammar import positional_or_option

    teacher_dir = positional_or_option(teacher_dir, teacher_option, "TEACHER_DIR", "--teacher")
    data = positional_or_option(data, data_option, "DATA", "--data")
    if (student_preset is None) == (student_config is None):
        raise click.UsageError("give exactly one of --student-preset or --student-config")
    teacher = load_pretrained(teacher_dir).float()
    if student_preset is not None:
        if student_preset not in PRESETS:
            raise ConfigError(f"unknown preset {student_preset!r}; available: {sorted(PRESETS)}")
        fields = dict(PRESETS[student_preset])
    else:
        fields = json.loads(Path(student_config).read_text(encoding="utf-8"))
    fields.update(_parse_overrides(student_override))
    t_vocab = teacher.config.vocab_size
    if fields.get("vocab_size", t_vocab) != t_vocab:
        raise ConfigError(
            f"vocabulary mismatch: the student config says vocab_size={fields['vocab_size']} but the "
            f"teacher has {t_vocab}; distillation needs the teacher's vocabulary (drop vocab_size)"
        )
    fields["vocab_size"] = t_vocab
    fields.setdefault("max_seq_len", max(seq_len, teacher.config.max_seq_len))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        fields.setdefault(key, getattr(teacher.config, key))
    scfg = ModelConfig.from_dict(fields)
    if scfg.arch != "decoder" or teacher.config.arch != "decoder":
        raise ConfigError("lmkit distill trains decoder-only (causal LM) students from decoder teachers")
    set_seed(seed)
    student = build_model(scfg)
    train, val = _loaders(data, scfg, seq_len, batch_size, seed)
    if seq_len > teacher.config.max_seq_len:
        raise ConfigError(f"--seq-len {seq_len} is longer than the teacher's max_seq_len={teacher.config.max_seq_len}")
    with _RunDir(run_dir) as run:
        cfg = _train_config(run, lr, seed, steps, warmup=steps // 20)
        result = distill(teacher, student, train, val, train_config=cfg, temperature=temperature, alpha=alpha)
    student = student.to("cpu")
    _save_with_tokenizer(student, out, teacher_dir)
    n_s = sum(p.numel() for p in {id(p): p for p in student.parameters()}.values())
    n_t = sum(p.numel() for p in {id(p): p for p in teacher.parameters()}.values())
    click.echo(f"student {n_s:,} parameters (teacher {n_t:,}, {n_t / max(n_s, 1):.1f}x)")
    if "eval_ppl" in result:
        click.echo(f"student held-out perplexity {result['eval_ppl']:.3f}")
    click.echo(f"saved {out}")


COMMANDS: list[click.Command] = [prune_cmd, distill_cmd]
