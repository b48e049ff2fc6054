"""CLI: `lmkit tokenizer train|encode|decode|info` (`add-tokens` is added by hub/commands.py: it
grows checkpoints, and hub sits below tokenizers) and `lmkit segment` (Chinese word segmentation).

Every tokenizer file is opened with `load_tokenizer`, whatever its algorithm or format.
"""

from __future__ import annotations

import sys

import click

from lmkit.cli_grammar import progress_flags


def _allowed_special(value: str):
    return value if value in ("all", "none") else {s for s in value.split(",") if s}


@click.group("tokenizer")
def tokenizer_group() -> None:
    """Train, inspect and run tokenizers (byte-level BPE; HF tokenizer.json files too)."""


@tokenizer_group.command("train")
@progress_flags
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Tokenizer file to write.")
@click.option("--vocab-size", type=int, required=True, help="Total tokens: 256 bytes + merges + specials.")
@click.option("--min-frequency", type=int, default=2, show_default=True, help="Never merge rarer pairs.")
@click.option("--special", "specials", multiple=True, help="Special token (repeatable), e.g. <|endoftext|>.")
@click.option("--chat-tokens/--no-chat-tokens", default=True, show_default=True,
              help="Reserve the chat special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, <|pad|>) first, "
                   "so the model can be chat-tuned without growing its vocabulary.")
@click.option("--pattern", default="gpt2", show_default=True, help="Pre-tokenizer split: gpt2, cl100k or a regex.")
@click.option("--format", "fmt", type=click.Choice(["lmkit", "hf"]), default="lmkit", show_default=True,
              help="lmkit JSON, or a Hugging Face tokenizer.json.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def tokenizer_train(files, out, vocab_size, min_frequency, specials, chat_tokens, pattern, fmt, progress) -> None:
    """Train a byte-level BPE tokenizer on UTF-8 FILES (streamed, never loaded whole)."""
    import time
    from pathlib import Path

    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

    if chat_tokens:
        specials = list(dict.fromkeys([*CHAT_SPECIAL_TOKENS, *specials]))
    start = time.perf_counter()
    tok = BPETokenizer.train(
        [Path(f) for f in files], vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
        pattern=pattern, show_progress=sys.stderr.isatty() if progress is None else progress,
    )
    tok.save_hf_json(out) if fmt == "hf" else tok.save(out)
    click.echo(f"wrote {out} ({fmt}): {tok!r} in {time.perf_counter() - start:.2f} s")


@tokenizer_group.command("encode")
@click.argument("tokenizer", type=click.Path(exists=True))
@click.argument("text", nargs=-1)
@click.option("-f", "--file", "file_", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the text from a file ('-' for stdin) instead of TEXT.")
@click.option("--allowed-special", default="none", show_default=True,
              help="Special tokens recognised in the text: all, none, or comma-separated names.")
@click.option("--tokens", "show_tokens", is_flag=True, help="Print token strings instead of ids.")
def tokenizer_encode(tokenizer, text, file_, allowed_special, show_tokens) -> None:
    """Print the token ids of TEXT (joined by spaces), or of --file / stdin.

    TOKENIZER is a tokenizer file or a model directory."""
    from lmkit.tokenizers.loading import load_tokenizer

    if file_ is not None:
        data = file_.read()
    elif text:
        data = " ".join(text)
    else:
        data = sys.stdin.read()
    tok = load_tokenizer(tokenizer)
    ids = tok.encode(data, allowed_special=_allowed_special(allowed_special))
    click.echo(" ".join(tok.id_to_token(i) for i in ids) if show_tokens else " ".join(map(str, ids)))


@tokenizer_group.command("decode")
@click.argument("tokenizer", type=click.Path(exists=True))
@click.argument("ids", nargs=-1)
def tokenizer_decode(tokenizer, ids) -> None:
    """Print the text of token IDS (arguments, or whitespace-separated on stdin)."""
    from lmkit.tokenizers.loading import load_tokenizer

    words = list(ids) or sys.stdin.read().split()
    try:
        values = [int(w) for w in words]
    except ValueError as exc:
        raise click.BadParameter(f"token ids must be integers: {exc}") from exc
    click.echo(load_tokenizer(tokenizer).decode(values))


@tokenizer_group.command("info")
@click.argument("tokenizer", type=click.Path(exists=True))
def tokenizer_info(tokenizer) -> None:
    """Vocabulary size, merges, pre-tokenizer and special tokens of a tokenizer file."""
    from lmkit.tokenizers.loading import load_tokenizer

    tok = load_tokenizer(tokenizer)
    click.echo(f"type:           {type(tok).__name__}")
    click.echo(f"vocab size:     {tok.vocab_size}")
    if hasattr(tok, "merge_ids"):
        from lmkit.tokenizers.pretokenize import pattern_name

        click.echo(f"merges:         {len(tok.merge_ids())}")
        click.echo(f"pattern:        {pattern_name(tok.pattern) or tok.pattern}")
        click.echo(f"normalizer:     {tok.normalizer}")
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    click.echo(f"special tokens: {', '.join(f'{k}={v}' for k, v in specials) or '-'}")


@click.command("segment")
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
    from lmkit.tokenizers.segment import Dictionary, jieba_dictionary_path
    from lmkit.tokenizers.segment import segment as run

    dictionary = Dictionary.load(dict_path or jieba_dictionary_path(), user_dict)
    for line in source:
        click.echo(sep.join(run(line.rstrip("\r\n"), dictionary, method, max_len)))


COMMANDS: list[click.Command] = [tokenizer_group, segment]
