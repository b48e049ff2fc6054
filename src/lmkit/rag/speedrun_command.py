"""CLI: `lmkit speedrun` (the whole life cycle, measured; heavy imports inside the command)."""

from __future__ import annotations

import click

from lmkit.rag.speedrun_profile import PROFILES, STAGES


@click.command("speedrun")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="full", show_default=True,
              help="tiny: about a minute (the test suite's guard); full: the <= 30 min benchmark.")
@click.option("--tiny", is_flag=True, help="Same as --profile tiny.")
@click.option("--out", type=click.Path(file_okay=False), default="speedrun", show_default=True,
              help="Directory for the models, the GGUF file and the report card.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--until", type=click.Choice(STAGES), default=None, help="Stop after this stage.")
def speedrun_cmd(profile, tiny, out, seed, until) -> None:
    """From nothing to a served chat model with RAG, every stage measured: tokenizer -> pretrain ->
    SFT -> DPO -> eval -> quantize -> GGUF -> serve (openai client) -> RAG over the notes.

    Writes OUT/card.md and OUT/card.html; exits non-zero, naming the stage, when a stage fails
    or misses its threshold."""
    from lmkit.rag.speedrun import run_speedrun
    from lmkit.rag.speedrun_profile import get_profile

    result = run_speedrun(get_profile("tiny" if tiny else profile), out, seed=seed, until=until,
                          report=lambda line: click.echo(line, err=True))
    if not result.ok:
        raise click.ClickException(result.summary())
