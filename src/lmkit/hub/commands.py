"""CLI: `lmkit info`, `lmkit convert`, `lmkit export gguf`, `lmkit quantize` and
`lmkit tokenizer add-tokens` / `expand`.

`quantize` lives here rather than in quant/commands.py because it reads Hugging Face
checkpoint directories (hub), and quant sits above hub in the layering rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from lmkit.cli_grammar import RenamedOptionsCommand, dtype_option
from lmkit.hub.add_tokens_command import add_tokens_cmd
from lmkit.hub.expand_vocab_command import expand_cmd
from lmkit.tokenizers.commands import tokenizer_group

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.lmkit.json",
                   "generation_config.json", "config.json", "chat_template.jinja")


@click.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@dtype_option()
def info(directory: str, dtype: str) -> None:
    """What the checkpoint DIRECTORY is (family, parameters, dtype, context, RoPE type, chat
    template, eos ids) and the memory it needs for inference and fine-tuning in --dtype.
    Reads the config and tokenizer files only, never the weights."""
    from lmkit.hub.describe import describe_checkpoint

    click.echo(describe_checkpoint(directory, dtype=dtype))


@click.command("convert")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("target", type=click.Path(file_okay=False))
@dtype_option()
@click.option("--max-shard-size", default=None, help="e.g. 2GB or 500MB: shard the safetensors")
def convert(source: str, target: str, dtype: str, max_shard_size: str | None) -> None:
    """Re-save a Hugging Face checkpoint SOURCE as TARGET (cast, re-shard), validating every tensor."""
    from lmkit.hub import load_pretrained, save_pretrained

    model = load_pretrained(source, dtype=dtype)
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


@click.group("export")
def export_group() -> None:
    """Export a model to other ecosystems' formats."""


@export_group.command("gguf", cls=RenamedOptionsCommand, renamed={"--output": "--out"})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "output", required=True, type=click.Path(dir_okay=False),
              help="the .gguf file to write")
@click.option("--type", "ftype", type=click.Choice(["f32", "f16", "q8_0", "q4_0", "q4_k_m"]), default="f16",
              show_default=True, help="tensor type of the 2-D weights, as llama-quantize mixes them (norms stay f32)")
def export_gguf_cmd(model_dir: str, output: str, ftype: str) -> None:
    """Write the Llama-family checkpoint MODEL_DIR (+ its tokenizer.json) as a llama.cpp GGUF file."""
    from lmkit.hub.adapter_folder import require_full_checkpoint
    from lmkit.hub.gguf import export_gguf_dir

    require_full_checkpoint(model_dir, "lmkit export gguf")
    try:
        written = export_gguf_dir(model_dir, output, ftype)
    except ValueError as exc:  # a model GGUF cannot hold; an LmkitError is reported by the root group
        raise click.ClickException(str(exc)) from exc
    types = ", ".join(f"{n} {kind}" for kind, n in written["types"].items())
    click.echo(f"wrote {written['path']}: {written['tensors']} tensors ({types}), {written['bytes']} bytes")


def _calibration_ids(path: str, model_dir: str, n: int, seq_len: int):
    import torch

    from lmkit.tokenizers.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    ids = tok.encode(text[: n * seq_len * 16])
    if len(ids) < seq_len:
        raise click.ClickException(f"{path}: only {len(ids)} tokens; calibration needs at least {seq_len}")
    k = min(n, len(ids) // seq_len)
    return torch.tensor(ids[: k * seq_len]).reshape(k, seq_len)


@click.command("quantize", cls=RenamedOptionsCommand, renamed={"--output": "--out"})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "output", required=True, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(["int8", "int4", "w8a8", "llm-int8", "nf4", "rtn", "gptq"]),
              required=True, help="int8 / int4 (= rtn --bits 4) / gptq --bits 4 run on fused weight-only CPU "
                                  "kernels; w8a8 also quantizes activations (int8 x int8, fastest on CPU)")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False), default=None,
              help="text file of calibration data (GPTQ)")
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="rtn / gptq")
@click.option("--group-size", type=int, default=64, show_default=True,
              help="int4 / rtn / gptq: input columns per (scale, zero), a multiple of 32 for the fused "
                   "kernel; 0 = one group per output row")
@click.option("--block-size", type=int, default=64, show_default=True, help="nf4")
@click.option("--no-double-quant", is_flag=True, help="nf4: keep the block constants in fp32")
@click.option("--threshold", type=float, default=6.0, show_default=True, help="llm-int8 outlier threshold")
@click.option("--skip", multiple=True, default=("lm_head",), show_default=True,
              help="module names to keep in floating point (repeatable)")
@click.option("--calib-samples", type=int, default=32, show_default=True)
@click.option("--calib-seq-len", type=int, default=256, show_default=True)
def quantize_cmd(model_dir, output, method, calib, bits, group_size, block_size, no_double_quant, threshold, skip,
                 calib_samples, calib_seq_len) -> None:
    """Quantize the checkpoint MODEL_DIR's Linear layers and save a quantized checkpoint OUTPUT."""
    import torch

    from lmkit.hub.pretrained import load_pretrained
    from lmkit.quant.checkpoint import save_quantized
    from lmkit.quant.quantize_model import linear_weight_bytes, quantize_model, quantized_weight_bytes

    from lmkit.hub.adapter_folder import require_full_checkpoint

    require_full_checkpoint(model_dir, "lmkit quantize")
    if method == "gptq" and calib is None:
        raise click.ClickException("--method gptq needs --calib FILE (text to calibrate on)")
    try:
        model = load_pretrained(model_dir, dtype=torch.float32)
        calib_ids = _calibration_ids(calib, model_dir, calib_samples, calib_seq_len) if method == "gptq" else None
        kw = dict(skip=list(skip), bits=int(bits), group_size=group_size or None, block_size=block_size,
                  double_quant=not no_double_quant, threshold=threshold)
        if method == "gptq":
            kw.update(calib=calib_ids, progress=True)
        quantize_model(model, method, **kw)
        save_quantized(model, output)
    except ValueError as exc:  # e.g. an unsupported bits/group combination
        raise click.ClickException(str(exc)) from exc
    for name in TOKENIZER_FILES:
        src = Path(model_dir) / name
        if src.exists() and name != "config.json":
            shutil.copy2(src, Path(output) / name)
    names = model.quantization["modules"]
    fp32 = linear_weight_bytes(model, names)
    qb = quantized_weight_bytes(model)
    click.echo(f"quantized {len(names)} layers with {method}: weights {fp32 / 2**20:.2f} MiB fp32 -> "
               f"{qb / 2**20:.2f} MiB ({fp32 / qb:.2f}x smaller); wrote {output}")


# `lmkit tokenizer add-tokens` grows a checkpoint (hub), so it joins the tokenizer group from here.
tokenizer_group.add_command(add_tokens_cmd)
tokenizer_group.add_command(expand_cmd)

COMMANDS: list[click.Command] = [info, convert, export_group, quantize_cmd]
