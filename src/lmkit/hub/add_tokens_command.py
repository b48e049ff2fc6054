"""CLI: `lmkit tokenizer add-tokens MODEL --chat chatml` / `--tokens ...` (added to the
`tokenizer` group by hub/commands.py)."""

from __future__ import annotations

import click


@click.command("add-tokens")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--chat", "chat", default=None,
              help="add a chat template's control tokens (and a pad token if missing): chatml | llama3")
@click.option("--tokens", "tokens", multiple=True, help="a token to add (repeatable; or several, space-separated)")
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False),
              help="write the grown checkpoint here (default: MODEL_DIR, in place)")
def add_tokens_cmd(model_dir: str, chat: str | None, tokens: tuple[str, ...], out: str | None) -> None:
    """Add tokens to the checkpoint MODEL_DIR's tokenizer and grow its embeddings and LM head
    (new rows = the mean embedding); records eos / pad ids and the chat template."""
    from lmkit.errors import LmkitError
    from lmkit.hub.add_tokens import add_tokens_to_checkpoint

    wanted = [t for group in tokens for t in group.split()]
    if not chat and not wanted:
        raise click.UsageError("give --chat TEMPLATE (e.g. --chat chatml) or --tokens TOKEN ...")
    try:
        info = add_tokens_to_checkpoint(model_dir, wanted, chat=chat, out=out)
    except LmkitError as exc:
        raise click.ClickException(str(exc)) from exc
    added = ", ".join(f"{t}={i}" for t, i in info["added"].items()) or "none (all were already tokens)"
    click.echo(f"added {added}; vocabulary {info['vocab_size']}; wrote {info['path']}")
