"""CLI: `lmkit tokenizer expand MODEL --domain FILE --new-tokens N --out DIR` (added to the
`tokenizer` group by hub/commands.py)."""

from __future__ import annotations

import click


@click.command("expand")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--domain", "domain", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="domain text file to learn the new pieces from (repeatable)")
@click.option("--new-tokens", "new_tokens", type=click.IntRange(1), required=True, help="how many tokens to add")
@click.option("--domain-vocab", "domain_vocab", type=click.IntRange(257), default=None,
              help="vocabulary size of the domain tokenizer (default 256 + 2 * new tokens)")
@click.option("--non-ascii-only", is_flag=True, help="add only pieces with a non-ASCII byte (ASCII text keeps its ids)")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="the expanded checkpoint")
def expand_cmd(model_dir: str, domain: tuple[str, ...], new_tokens: int, domain_vocab: int | None,
               non_ascii_only: bool, out: str) -> None:
    """Vocabulary expansion: train a BPE on the --domain text, append its new pieces to
    MODEL_DIR's byte-level BPE (old ids unchanged) and grow the embeddings and LM head, each
    new row the mean of the old tokens that spell it (docs/continual-pretraining.md)."""
    from lmkit.hub.expand_vocab import expand_vocab_checkpoint

    info = expand_vocab_checkpoint(model_dir, list(domain), new_tokens, out, domain_vocab, non_ascii_only)
    click.echo(f"added {info['added']} tokens (ids {info['first_new_id']}..{info['first_new_id'] + info['added'] - 1}, "
               f"{info['skipped']} unreachable pieces skipped); vocabulary {info['vocab_size']}; wrote {info['path']}")
    click.echo("first new pieces: " + " ".join(info["examples"]))
