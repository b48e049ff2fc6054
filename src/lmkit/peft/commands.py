"""CLI: `lmkit sft`, `lmkit finetune`, `lmkit merge` (heavy imports inside the commands)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.txt", "merges.txt", "vocab.json", "chat_template.jinja")
DEFAULT_SEQ_LEN = 512
PER_SEQUENCE_METHODS = ("prefix", "prompt", "ptuning", "ptuning2", "probe")
METHOD_CHOICES = ["full", "lora", "qlora", "adalora", "adapter", "fusion", "adapterdrop", "prefix", "prompt",
                  "ptuning", "ptuning2", "bitfit", "probe"]


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _parse_options(options: tuple[str, ...]) -> dict:
    out = {}
    for opt in options:
        if "=" not in opt:
            raise click.ClickException(f"--option {opt!r}: expected KEY=VALUE (VALUE parsed as JSON if it can be)")
        k, v = opt.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _default_targets(method: str) -> tuple[str, ...]:
    from lmkit.peft.sft_defaults import SFT_DEFAULTS

    return SFT_DEFAULTS.method_options(method)["target_modules"]


def _save_full(model, out: Path, model_dir: Path, tokenizer) -> None:
    """A whole checkpoint that records its end of turn (eos list, pad, chat template): the
    base's other tokenizer files are copied first, then save_pretrained writes tokenizer.json
    and tokenizer_config.json from `tokenizer`."""
    from lmkit.hub import save_pretrained

    _copy_tokenizer(model_dir, out)
    save_pretrained(model, out, tokenizer=tokenizer if hasattr(tokenizer, "save_hf_json") else None)


def _method_config(method: str, r, alpha, dropout, targets, rslora, options: dict):
    from lmkit.errors import ConfigError

    core = {}
    if method in ("lora", "qlora"):
        core = {"r": r or 8, "alpha": alpha or 16, "dropout": dropout or 0.0}
        core["target_modules"] = tuple(targets.split(",")) if targets else _default_targets(method)
        if rslora:
            core["use_rslora"] = True
    elif method == "adalora":
        if r:
            core["init_r"] = r
        if alpha:
            core["alpha"] = alpha
        if dropout:
            core["dropout"] = dropout
        core["target_modules"] = tuple(targets.split(",")) if targets else _default_targets(method)
    elif method != "full" and (r or alpha or targets or rslora):
        raise click.ClickException(f"--r/--alpha/--target-modules/--rslora apply to lora, qlora and adalora, not {method}")
    kw = {**core, **options}
    try:
        if method == "full":
            if options:
                raise click.ClickException("--option does not apply to full fine-tuning")
            return None
        if method == "lora":
            from lmkit.peft.lora import LoraConfig

            return LoraConfig.from_dict(kw)
        if method == "qlora":
            from lmkit.peft.qlora import QLoraConfig

            return QLoraConfig.from_dict(kw)
        if method == "adalora":
            from lmkit.peft.adalora import AdaLoraConfig

            return AdaLoraConfig.from_dict(kw)
        from lmkit.peft.registry import make_config

        return make_config(method, **kw)
    except (ConfigError, TypeError) as exc:
        raise click.ClickException(f"{method} options: {exc}") from exc


def _run(method, model_dir, data, eval_data, out, template, method_config, steps, lr, batch_size, seq_len, pack,
         eval_fraction, seed, device, precision, max_len, parallel=None):
    from lmkit.cli_grammar import check_fits_context
    from lmkit.data.sft import load_sft_examples, sft_loader
    from lmkit.hub import load_pretrained
    from lmkit.peft.finetune import run_finetune
    from lmkit.peft.load_any import require_full_checkpoint
    from lmkit.peft.sft_defaults import SFT_DEFAULTS
    from lmkit.hub.checkpoint_template import checkpoint_template
    from lmkit.tokenizers.chat_template import require_template_tokens
    from lmkit.tokenizers.loading import load_tokenizer

    model_dir, out = Path(model_dir), Path(out)
    require_full_checkpoint(model_dir, "fine-tuning")
    tokenizer = load_tokenizer(model_dir)
    template = checkpoint_template(model_dir, tokenizer, template)
    require_template_tokens(template, tokenizer, model=str(model_dir))  # before the weights load
    model = load_pretrained(model_dir)
    context = model.config.max_seq_len
    check_fits_context("--seq-len", seq_len, context)
    check_fits_context("--max-len", max_len, context)
    seq_len = seq_len if seq_len is not None else min(DEFAULT_SEQ_LEN, context)
    examples = load_sft_examples(data, tokenizer, template, max_len=max_len or seq_len)
    if eval_data:
        held = load_sft_examples(eval_data, tokenizer, template, max_len=max_len or seq_len)
    else:
        if len(examples) < 2:
            raise click.ClickException("need at least 2 examples to hold one out (or pass --eval-data)")
        import random

        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(examples) * eval_fraction)))
        held = [examples[i] for i in order[:n_eval]]
        examples = [examples[i] for i in order[n_eval:]]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    if pack and method in PER_SEQUENCE_METHODS:
        # a soft prompt / prefix belongs to one sequence: packed rows would share one
        click.echo(f"note: {method} adds virtual tokens per sequence; examples are padded, not packed", err=True)
        pack = False
    train = sft_loader(examples, batch_size, pack=pack, seq_len=seq_len, pad_id=pad, seed=seed)
    held_loader = sft_loader(held, batch_size, pack=pack, seq_len=seq_len, pad_id=pad, shuffle=False)
    tc = SFT_DEFAULTS.train_config(method, steps, lr, out_dir=str(out / "run"), seed=seed, device=device,
                                   precision=precision, eval_steps=0, parallel=parallel)
    report = run_finetune(method, model, tokenizer, train, held_loader, method_config, tc)
    if report is None:  # a rank other than 0 of a sharded run: rank 0 writes the gathered model
        return None
    model = report.model
    out.mkdir(parents=True, exist_ok=True)
    base = str(model_dir.resolve())  # recorded, so `lmkit chat/serve/generate ADAPTER` finds the base
    if method == "full":
        _save_full(model, out, model_dir, tokenizer)
    elif method in ("lora", "qlora"):
        from lmkit.peft.peft_format import save_lora

        save_lora(model, out, base_model_name_or_path=base)
    elif method == "adalora":
        from lmkit.peft.adalora import save_adalora

        save_adalora(model, out, base_model_name_or_path=base)
    else:
        from lmkit.peft.method_io import save_method

        save_method(model, out, method, method_config, base_model_name_or_path=base)
    from lmkit.atomic import atomic_write_text

    atomic_write_text(out / "finetune_report.json", json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    click.echo(report.summary())
    click.echo(f"base weights unchanged: {report.base_unchanged}" if report.base_unchanged is not None else
               "full fine-tuning: every weight was trained")
    click.echo(f"wrote {out}")
    return report


def _train_options(f):
    from lmkit.peft.sft_defaults import SFT_DEFAULTS as D

    f = click.option("--steps", type=click.IntRange(1), default=None,
                     help=f"optimizer steps (default: {D.steps}; warmup then cosine to {D.min_lr_ratio:g} x lr)")(f)
    f = click.option("--lr", type=float, default=None,
                     help=f"learning rate (default: {D.lr_full:g} full, {D.lr_peft:g} others; 1e-5..2e-5 for "
                          "billion-parameter models)")(f)
    f = click.option("--batch-size", type=int, default=8, show_default=True)(f)
    f = click.option("--seq-len", type=click.IntRange(1), default=None,
                     help=f"packed row length / max example length (default: {DEFAULT_SEQ_LEN} or the model's "
                          "context if shorter; longer than the context is an error)")(f)
    f = click.option("--pack/--no-pack", default=True, show_default=True, help="pack several examples per row")(f)
    f = click.option("--eval-data", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="held-out SFT file (default: hold out --eval-fraction of DATA)")(f)
    f = click.option("--eval-fraction", type=float, default=0.1, show_default=True)(f)
    f = click.option("--template", default=None,
                     help="chat template: the checkpoint's own (default), one of its named templates, or a "
                          "built-in one: chatml | llama3")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--device", default="auto", show_default=True)(f)
    f = click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)(f)
    f = click.option("--max-len", type=click.IntRange(1), default=None,
                     help="truncate examples to this many tokens (default: --seq-len)")(f)
    return f


@click.command("finetune")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data_option", hidden=True, type=click.Path(exists=True, dir_okay=False),
              help="the old spelling of DATA")
@click.option("--method", type=click.Choice(METHOD_CHOICES), default="lora", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="output directory")
@click.option("--r", type=int, default=None, help="LoRA rank (AdaLoRA: init_r)")
@click.option("--alpha", type=float, default=None, help="LoRA alpha")
@click.option("--dropout", type=float, default=None, help="LoRA dropout")
@click.option("--target-modules", default=None,
              help="comma-separated, e.g. q_proj,v_proj or all-linear (default: all-linear)")
@click.option("--rslora", is_flag=True, help="scale by alpha/sqrt(r) (rsLoRA)")
@click.option("--option", "options", multiple=True, help="method config field KEY=VALUE (repeatable)")
@_train_options
def finetune_cmd(model_dir, data, data_option, method, out, r, alpha, dropout, target_modules, rslora, options,
                 steps, lr, batch_size, seq_len, pack, eval_data, eval_fraction, template, seed, device, precision,
                 max_len):
    """Fine-tune MODEL_DIR (a Hugging Face checkpoint directory with its tokenizer) on DATA (OpenAI
    messages JSONL or Alpaca JSON/JSONL) with any method; writes the adapter (LoRA: PEFT's adapter
    files) or the model to --out and reports trainable vs total parameters, peak memory and
    held-out loss."""
    from lmkit.cli_grammar import positional_or_option

    data = positional_or_option(data, data_option, "DATA", "--data")
    cfg = _method_config(method, r, alpha, dropout, target_modules, rslora, _parse_options(options))
    _run(method, model_dir, data, eval_data, out, template, cfg, steps, lr, batch_size, seq_len, pack,
         eval_fraction, seed, device, precision, max_len)


@click.command("sft")
@click.argument("model_dir", type=click.Path(exists=True))
@click.argument("data", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="output model directory")
@click.option("--parallel", "parallel", default=None, metavar="SPEC",
              help="under torchrun: the layout, as in a pretrain config's parallel: section; KEY=VALUE,... "
                   "(e.g. tp=2 or dp=2,tp=2,fsdp=true) or a YAML/JSON file with a parallel: section "
                   "(default: DDP over the launched processes)")
@_train_options
def sft_cmd(model_dir, data, out, parallel, steps, lr, batch_size, seq_len, pack, eval_data, eval_fraction, template,
            seed, device, precision, max_len):
    """Supervised fine-tuning: train every weight of MODEL_DIR on DATA (loss on assistant tokens only).

    Under `torchrun --nproc-per-node N -m lmkit sft ... --parallel tp=2` the N processes split the
    model as the parallel: section says (docs/training.md); rank 0 writes the gathered model.
    (The old order `lmkit sft DATA MODEL_DIR` still works, with a deprecation note.)"""
    from lmkit.cli_grammar import model_then_data
    from lmkit.errors import ConfigError
    from lmkit.train.config import parse_parallel

    model_dir, data = model_then_data(model_dir, data, "sft")
    try:
        layout = parse_parallel(parallel) if parallel else None
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--parallel") from exc
    _run("full", model_dir, data, eval_data, out, template, None, steps, lr, batch_size,
         seq_len, pack, eval_fraction, seed, device, precision, max_len, parallel=layout)


@click.command("merge")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
def merge_cmd(model_dir, adapter_dir, out):
    """Fold a LoRA (PEFT layout, ours or PEFT's) or AdaLoRA adapter into the full-precision base
    and write a plain checkpoint that any tool can load."""
    from lmkit.hub import load_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    adapter = Path(adapter_dir)
    model = load_pretrained(model_dir)
    if (adapter / "adapter_config.json").is_file():
        from lmkit.peft import load_lora, unload_lora

        model = unload_lora(load_lora(model, adapter), merge=True)
    elif (adapter / "adalora_config.json").is_file():
        from lmkit.peft.adalora import load_adalora, merge_adalora

        model = merge_adalora(load_adalora(model, adapter))
    else:
        raise click.ClickException(
            f"{adapter}: no adapter_config.json (LoRA) or adalora_config.json (AdaLoRA); other methods add "
            "modules that cannot be folded into the base weights"
        )
    _save_full(model, Path(out), Path(model_dir), load_tokenizer(model_dir))
    click.echo(f"merged {adapter} into {model_dir} -> {out}")


COMMANDS: list[click.Command] = [sft_cmd, finetune_cmd, merge_cmd]
