"""CLI: `lmkit data prepare` (corpus -> memmap token shards)."""

from __future__ import annotations

import click

from lmkit.cli_grammar import progress_flags


@click.group("data")
def data_group() -> None:
    """Pretraining data: corpus -> token shards."""


@data_group.command("prepare")
@progress_flags
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-t", "--tokenizer", "tokenizer_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer file.")
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

    try:
        cfg = ShardConfig(split_by=split_by, val_fraction=val_fraction, seed=seed, workers=workers, eos_token=eos_token, shard_tokens=shard_tokens)
        index = prepare_shards(list(corpus), tokenizer_path, out_dir, cfg, overwrite=overwrite)
    except ValueError as exc:  # a bad ShardConfig value; an LmkitError is reported by the root group
        raise click.ClickException(str(exc)) from exc
    for split, info in index["splits"].items():
        click.echo(f"{split}: {info['documents']} documents, {info['tokens']} tokens in {len(info['shards'])} shard(s)")
    click.echo(f"wrote {out_dir} ({index['dtype']}, vocab {index['vocab_size']}, eos id {index['eos_id']})")


COMMANDS: list[click.Command] = [data_group]
