"""The `lmkit` command: one sub-command per stage of a model's life.

Each section below belongs to one area; command bodies import lazily so that
`lmkit --help` stays fast and optional extras are needed only by their commands.
"""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmkit")
def cli() -> None:
    """lmkit: train, fine-tune, serve and evaluate language models."""


def main() -> None:
    try:
        cli(prog_name="lmkit")
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


# ---- section: models and hub ----------------------------------------------------------
@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def info(directory: str) -> None:
    """Architecture, parameters by component and weight memory of a checkpoint DIRECTORY."""
    from lmkit.hub.describe import describe_checkpoint

    click.echo(describe_checkpoint(directory))


@cli.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="cast the weights")
@click.option("--max-shard-size", default=None, help="e.g. 2GB or 500MB: shard the safetensors")
def convert(source: str, target: str, dtype: str | None, max_shard_size: str | None) -> None:
    """Re-save a Hugging Face checkpoint SOURCE as TARGET (cast, re-shard), validating every tensor."""
    import torch

    from lmkit.hub import load_pretrained, save_pretrained

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    model = load_pretrained(source, dtype=dtypes[dtype] if dtype else None)
    save_pretrained(model, target, max_shard_bytes=_parse_size(max_shard_size))
    click.echo(f"wrote {target}")


def _parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    import re

    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text.upper())
    if not m:
        raise click.BadParameter(f"cannot read size {text!r}; use e.g. 500MB or 2GB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


# ---- end section: models and hub ------------------------------------------------------

# ---- section: tokenizers ------------------------------------------------------------------
@cli.group("tokenizer")
def tokenizer_group() -> None:
    """Train, inspect and run tokenizers (byte-level BPE; HF tokenizer.json files too)."""


def _tokenizer_from_file(path: str):
    """lmkit's generic loader when there is one, else the BPE loader (lmkit JSON or tokenizer.json)."""
    import lmkit.tokenizers as tk

    loader = getattr(tk, "load_tokenizer", None)
    if callable(loader):
        return loader(path)
    from lmkit.tokenizers.bpe import BPETokenizer

    return BPETokenizer.load(path)


def _allowed_special(value: str):
    return value if value in ("all", "none") else {s for s in value.split(",") if s}


@tokenizer_group.command("train")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Tokenizer file to write.")
@click.option("--vocab-size", type=int, required=True, help="Total tokens: 256 bytes + merges + specials.")
@click.option("--min-frequency", type=int, default=2, show_default=True, help="Never merge rarer pairs.")
@click.option("--special", "specials", multiple=True, help="Special token (repeatable), e.g. <|endoftext|>.")
@click.option("--pattern", default="gpt2", show_default=True, help="Pre-tokenizer split: gpt2, cl100k or a regex.")
@click.option("--format", "fmt", type=click.Choice(["lmkit", "hf"]), default="lmkit", show_default=True,
              help="lmkit JSON, or a Hugging Face tokenizer.json.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def tokenizer_train(files, out, vocab_size, min_frequency, specials, pattern, fmt, progress) -> None:
    """Train a byte-level BPE tokenizer on UTF-8 FILES (streamed, never loaded whole)."""
    import time
    from pathlib import Path

    from lmkit.errors import LmkitError
    from lmkit.tokenizers.bpe import BPETokenizer

    start = time.perf_counter()
    try:
        tok = BPETokenizer.train(
            [Path(f) for f in files], vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
            pattern=pattern, show_progress=sys.stderr.isatty() if progress is None else progress,
        )
        tok.save_hf_json(out) if fmt == "hf" else tok.save(out)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out} ({fmt}): {tok!r} in {time.perf_counter() - start:.2f} s")


@tokenizer_group.command("encode")
@click.argument("tokenizer", type=click.Path(exists=True, dir_okay=False))
@click.argument("text", nargs=-1)
@click.option("-f", "--file", "file_", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the text from a file ('-' for stdin) instead of TEXT.")
@click.option("--allowed-special", default="none", show_default=True,
              help="Special tokens recognised in the text: all, none, or comma-separated names.")
@click.option("--tokens", "show_tokens", is_flag=True, help="Print token strings instead of ids.")
def tokenizer_encode(tokenizer, text, file_, allowed_special, show_tokens) -> None:
    """Print the token ids of TEXT (joined by spaces), or of --file / stdin."""
    from lmkit.errors import LmkitError

    if file_ is not None:
        data = file_.read()
    elif text:
        data = " ".join(text)
    else:
        data = sys.stdin.read()
    try:
        tok = _tokenizer_from_file(tokenizer)
        ids = tok.encode(data, allowed_special=_allowed_special(allowed_special))
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(" ".join(tok.id_to_token(i) for i in ids) if show_tokens else " ".join(map(str, ids)))


@tokenizer_group.command("decode")
@click.argument("tokenizer", type=click.Path(exists=True, dir_okay=False))
@click.argument("ids", nargs=-1)
def tokenizer_decode(tokenizer, ids) -> None:
    """Print the text of token IDS (arguments, or whitespace-separated on stdin)."""
    from lmkit.errors import LmkitError

    words = list(ids) or sys.stdin.read().split()
    try:
        values = [int(w) for w in words]
    except ValueError as exc:
        raise click.BadParameter(f"token ids must be integers: {exc}") from exc
    try:
        text = _tokenizer_from_file(tokenizer).decode(values)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(text)


@tokenizer_group.command("info")
@click.argument("tokenizer", type=click.Path(exists=True, dir_okay=False))
def tokenizer_info(tokenizer) -> None:
    """Vocabulary size, merges, pre-tokenizer and special tokens of a tokenizer file."""
    from lmkit.errors import LmkitError

    try:
        tok = _tokenizer_from_file(tokenizer)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"type:           {type(tok).__name__}")
    click.echo(f"vocab size:     {tok.vocab_size}")
    if hasattr(tok, "merge_ids"):
        from lmkit.tokenizers.pretokenize import pattern_name

        click.echo(f"merges:         {len(tok.merge_ids())}")
        click.echo(f"pattern:        {pattern_name(tok.pattern) or tok.pattern}")
        click.echo(f"normalizer:     {tok.normalizer}")
    click.echo(f"special tokens: {', '.join(f'{k}={v}' for k, v in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])) or '-'}")


# ---- end section: tokenizers --------------------------------------------------------------

# ---- section: segmentation ------------------------------------------------------------
@cli.command()
@click.argument("source", type=click.File("r", encoding="utf-8"), default="-")
@click.option("--method", type=click.Choice(["fmm", "bmm", "bimm", "maxprob"]), default="maxprob", show_default=True)
@click.option("--dict", "dict_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="dictionary in 'word [freq] [tag]' lines (default: jieba's dict.txt if installed)")
@click.option("--user-dict", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="extra words, same format; a missing freq is chosen to keep the word whole (repeatable)")
@click.option("--max-len", type=click.IntRange(1), default=None, help="longest match for fmm/bmm/bimm (default: longest word)")
@click.option("--sep", default=" / ", show_default=True, help="printed between words")
def segment(source, method: str, dict_path: str | None, user_dict: tuple[str, ...], max_len: int | None, sep: str) -> None:
    """Segment Chinese text from SOURCE (a file, or - for stdin), one output line per input line."""
    from lmkit.errors import LmkitError
    from lmkit.tokenizers.segment import Dictionary, jieba_dictionary_path
    from lmkit.tokenizers.segment import segment as run

    try:
        dictionary = Dictionary.load(dict_path or jieba_dictionary_path(), user_dict)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in source:
        click.echo(sep.join(run(line.rstrip("\r\n"), dictionary, method, max_len)))


# ---- end section: segmentation --------------------------------------------------------
# ---- section: data ----
@cli.group("data")
def data_group() -> None:
    """Pretraining data: corpus -> token shards."""


@data_group.command("prepare")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-t", "--tokenizer", "tokenizer_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Tokenizer file.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Shard directory to create.")
@click.option("--split-by", type=click.Choice(["line", "paragraph", "file"]), default="line", show_default=True, help="What one document is.")
@click.option("--val-fraction", type=float, default=0.0, show_default=True, help="Fraction of documents held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Key of the train/validation split.")
@click.option("--workers", type=int, default=1, show_default=True, help="Tokenizer processes.")
@click.option("--eos-token", default=None, help="Special token ending each document (default: guessed, e.g. <|endoftext|>).")
@click.option("--shard-tokens", type=int, default=1 << 28, show_default=True, help="Tokens per shard file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing shard directory.")
def data_prepare(corpus, tokenizer_path, out_dir, split_by, val_fraction, seed, workers, eos_token, shard_tokens, overwrite) -> None:
    """Tokenize CORPUS files/folders into memmap token shards in OUT."""
    from lmkit.data.shards import ShardConfig, prepare_shards
    from lmkit.errors import LmkitError

    try:
        cfg = ShardConfig(split_by=split_by, val_fraction=val_fraction, seed=seed, workers=workers, eos_token=eos_token, shard_tokens=shard_tokens)
        index = prepare_shards(list(corpus), tokenizer_path, out_dir, cfg, overwrite=overwrite)
    except (LmkitError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for split, info in index["splits"].items():
        click.echo(f"{split}: {info['documents']} documents, {info['tokens']} tokens in {len(info['shards'])} shard(s)")
    click.echo(f"wrote {out_dir} ({index['dtype']}, vocab {index['vocab_size']}, eos id {index['eos_id']})")


# ---- end section: data ----

# ---- section: train ----
@cli.command("memory")
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
@click.option("--devices", type=click.IntRange(1), default=1, show_default=True, help="data-parallel devices")
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True, help="comma-separated module names")
@click.option("--unit", type=click.Choice(["GB", "GiB", "MB", "MiB"]), default="GB", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the estimate as JSON")
def memory_cmd(model, n_params, layers, hidden, heads, ffn, vocab, seq, batch, method, precision, optimizer,
               checkpointing, zero, devices, lora_rank, lora_targets, unit, as_json) -> None:
    """Estimate training memory per device for MODEL (a preset such as llama-7b, or a
    config.json) or for --params N with --layers/--hidden: weights, gradients, optimizer
    states and activations."""
    import json as _json

    from lmkit.errors import LmkitError
    from lmkit.models.config import ModelConfig
    from lmkit.train.memory import PRESETS, config_for_memory, estimate_memory

    try:
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
        est = estimate_memory(
            config, n_params=int(n_params) if n_params else None, batch=batch, seq=seq, method=method,
            precision=precision, optimizer=optimizer, checkpointing=checkpointing, zero=zero, devices=devices,
            lora_rank=lora_rank, lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        )
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(_json.dumps(est.to_dict(), indent=2))
    else:
        click.echo(est.table(unit))
# ---- end section: train ----


# ---- section: pretrain ----------------------------------------------------------------
@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON: data, tokenizer, objective (clm|mlm|span|prefix), model, seq_len, batch_size, train")
@click.option("--resume", is_flag=True, help="continue from the latest checkpoint in train.out_dir")
def pretrain(config_path: str, resume: bool) -> None:
    """Pretrain a model from a config file (see docs/training.md)."""
    from lmkit.errors import LmkitError
    from lmkit.train.pretrain import PretrainConfig, run_pretrain

    try:
        result = run_pretrain(PretrainConfig.load(config_path), resume=resume)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"eval loss {result['eval_loss']:.4f}  perplexity {result['eval_ppl']:.2f}")
    if "export_dir" in result:
        click.echo(f"Hugging Face checkpoint: {result['export_dir']}")


@cli.command()
@click.option("--out", default="lmkit-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="where the corpus, tokenizer, checkpoints and the final model go")
@click.option("--steps", default=1200, show_default=True, help="optimizer steps (about 2-3 minutes on 2 CPU cores)")
@click.option("--vocab-size", default=2048, show_default=True)
@click.option("--seed", default=0, show_default=True)
def quickstart(out: str, steps: int, vocab_size: int, seed: int) -> None:
    """Train a BPE tokenizer and a small Llama-style model on Python's own documentation, then generate."""
    import time
    from pathlib import Path

    from lmkit.atomic import atomic_write_text
    from lmkit.corpus import english_text
    from lmkit.data.shards import ShardConfig, prepare_shards
    from lmkit.tokenizers import BPETokenizer
    from lmkit.train.pretrain import PretrainConfig, run_pretrain, unigram_baseline_ppl

    t0 = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    text = english_text()
    atomic_write_text(corpus, text)
    click.echo(f"[1/5] corpus: {len(text) / 1e6:.1f} MB of Python documentation -> {corpus}")

    tok = BPETokenizer.train([corpus], vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    tok.save(out_dir / "tokenizer.lmkit.json")
    click.echo(f"[2/5] byte-level BPE tokenizer: {tok.vocab_size} tokens")

    shards = out_dir / "shards"
    info = prepare_shards([corpus], tok, shards, ShardConfig(split_by="paragraph", val_fraction=0.05, seed=seed),
                          overwrite=True, progress=False)
    n_train, n_val = info["splits"]["train"]["tokens"], info["splits"]["val"]["tokens"]
    click.echo(f"[3/5] tokenized: {n_train:,} training and {n_val:,} validation tokens "
               f"({len(text.encode()) / (n_train + n_val):.2f} bytes/token)")

    click.echo(f"[4/5] training a Llama-style model for {steps} steps (Ctrl-C stops and saves)")
    cfg = PretrainConfig(
        data=str(shards), tokenizer=str(out_dir / "tokenizer.lmkit.json"), objective="clm", model="llama-tiny",
        seq_len=128, batch_size=16, export_dir=str(out_dir / "model"),
        train={"max_steps": steps, "lr": 3e-3, "warmup_steps": min(50, steps // 5), "schedule": "cosine",
               "min_lr_ratio": 0.1, "weight_decay": 0.1, "eval_every": max(1, steps // 5), "eval_steps": 0,
               "out_dir": str(out_dir / "run"), "seed": seed, "log_every": 10},
    )
    result = run_pretrain(cfg)
    baseline = unigram_baseline_ppl(str(shards), tok.vocab_size)
    click.echo(f"      validation perplexity {result['eval_ppl']:.1f}  (unigram baseline {baseline:.1f}; "
               f"{baseline / result['eval_ppl']:.1f}x better), {result['parameters']:,} parameters")

    from lmkit.hub.pretrained import load_pretrained

    model = load_pretrained(result["export_dir"])
    prompt = "The for statement"
    sample = _sample_text(model, tok, prompt, seed=seed)
    click.echo(f"[5/5] sample (temperature 0.8, top-k 40):\n\n{prompt}{sample}\n")
    click.echo(f"done in {time.perf_counter() - t0:.0f} s. The model is a Hugging Face checkpoint in {result['export_dir']}.")
    click.echo("Next, try:")
    click.echo(f"  lmkit info {result['export_dir']}")
    click.echo(f"  lmkit generate {result['export_dir']} --prompt 'Return the' --max-new-tokens 60")
    click.echo(f"  lmkit tokenizer encode {out_dir / 'tokenizer.lmkit.json'} 'def main():'")
    click.echo(f"  lmkit memory llama-7b --method lora")
    click.echo(f"  python -c \"from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('{result['export_dir']}'))\"")


def _sample_text(model, tok, prompt: str, seed: int, max_new_tokens: int = 80) -> str:
    from lmkit.infer import generate_text

    return generate_text(model, tok, prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8,
                         top_k=40, seed=seed)


# ---- end section: pretrain ------------------------------------------------------------

# ---- section: infer ----
@cli.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-p", "--prompt", required=True, help="Text to continue ('-' reads it from stdin).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0: greedy decoding; > 0: sample at this temperature.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sampling: keep the k best (0: off).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sampling: nucleus probability mass.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); it is not printed.")
@click.option("--stream/--no-stream", default=False, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, tokens, finish_reason} as JSON.")
@click.option("--compile", "compile_step", is_flag=True,
              help="torch.compile the decode step (CPU: ~10 s once, then about 1.3x faster per token).")
def generate_cmd(model_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, stream, as_json,
                 compile_step) -> None:
    """Continue PROMPT with the Hugging Face checkpoint in MODEL_DIR (needs MODEL_DIR/tokenizer.json)."""
    import json
    from pathlib import Path

    from lmkit.errors import LmkitError

    tok_path = Path(model_dir) / "tokenizer.json"
    if not tok_path.is_file():
        raise click.ClickException(f"{model_dir} has no tokenizer.json next to config.json")
    text = sys.stdin.read() if prompt == "-" else prompt
    try:
        from lmkit.hub import load_pretrained
        from lmkit.infer import GenerationConfig, generate, stream_text
        from lmkit.infer.generate import encode_prompt
        from lmkit.tokenizers.bpe import BPETokenizer

        tok = BPETokenizer.from_hf_json(tok_path)
        model = load_pretrained(model_dir)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                               temperature=temperature or 1.0, top_k=top_k or None, top_p=top_p, seed=seed,
                               stop=list(stop) or None, compile=compile_step)
        if as_json:
            out = generate(model, [encode_prompt(tok, text)], cfg, tokenizer=tok)
            click.echo(json.dumps({"text": out.texts[0], "tokens": out.sequences[0],
                                   "finish_reason": out.finish_reasons[0]}, ensure_ascii=False))
        elif stream:
            click.echo(text, nl=False)
            for delta in stream_text(model, tok, text, cfg):
                click.echo(delta, nl=False)
            click.echo()
        else:
            out = generate(model, [encode_prompt(tok, text)], cfg, tokenizer=tok)
            click.echo(text + out.texts[0])
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
# ---- end section: infer ----


# ---- section: per-area commands --------------------------------------------------------
# Areas with several commands keep them beside their code, in `lmkit/<area>/commands.py`,
# which exposes `COMMANDS: list[click.Command]` and imports its heavy dependencies lazily.
# (`lmkit quantize` lives in hub/commands.py: it reads checkpoints, and quant sits above hub.)
_AREA_COMMAND_MODULES = (
    "lmkit.serve.commands",
    "lmkit.compress.commands",
    "lmkit.hub.commands",
    "lmkit.peft.commands",
    "lmkit.align.commands",
    "lmkit.ngram.commands",
    "lmkit.eval.commands",
    "lmkit.rag.commands",
    "lmkit.agent.commands",
)


def _add_area_commands() -> None:
    import importlib

    for name in _AREA_COMMAND_MODULES:
        for command in importlib.import_module(name).COMMANDS:
            cli.add_command(command)


_add_area_commands()
# ---- end section: per-area commands ----------------------------------------------------


if __name__ == "__main__":
    main()
