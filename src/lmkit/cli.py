"""The `lmkit` command: one sub-command per stage of a model's life.

This file only assembles the command groups. Every command lives beside its code in
`lmkit/<area>/commands.py`, which exposes `COMMANDS: list[click.Command]` and imports its
heavy dependencies lazily (so `lmkit --help` stays fast and optional extras are needed only
by their commands).
"""

from __future__ import annotations

import importlib
import os
import sys

# Before anything imports torch: torch's CPU allocator puts allocations of 2 MiB and more in
# transparent huge pages when THP_MEM_ALLOC_ENABLE is set at its start (it reads the variable
# once). Batch-1 decoding streams every weight once per token, and on 4 KiB pages the bench
# CPU's bandwidth moves by a third from one process to the next (the 246M fp32 weight walk:
# 13.5-23 ms); in huge pages it is steady at 13 ms (docs/benchmarks.md, session 8). A value the
# user set wins (THP_MEM_ALLOC_ENABLE=0 turns it off).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import click  # noqa: E402  (after the environment variable above)

from lmkit.errors import LmkitError  # noqa: E402

# Listed in the order of the package map (DESIGN.md). `lmkit quantize` lives in
# hub/commands.py: it reads checkpoints, and quant sits above hub in the layering rule.
AREA_COMMAND_MODULES = (
    "lmkit.tokenizers.commands",
    "lmkit.ngram.commands",
    "lmkit.hub.commands",
    "lmkit.data.commands",
    "lmkit.train.commands",
    "lmkit.infer.commands",
    "lmkit.peft.commands",
    "lmkit.align.commands",
    "lmkit.compress.commands",
    "lmkit.edit.edit_commands",
    "lmkit.edit.merge_commands",
    "lmkit.vision.diffusion_commands",
    "lmkit.vision.clip_commands",
    "lmkit.vision.blip_commands",
    "lmkit.vision.vlm_commands",
    "lmkit.eval.commands",
    "lmkit.inspect.commands",
    "lmkit.serve.commands",
    "lmkit.rag.commands",
    "lmkit.agent.commands",
)


class LmkitGroup(click.Group):
    """The root group: an `LmkitError` raised by any command below it becomes a one-line CLI
    error (`Error: <message>`, exit status 1) instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LmkitError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=LmkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmkit")
def cli() -> None:
    """lmkit: train, fine-tune, serve and evaluate language models."""


def _add_area_commands() -> None:
    for name in AREA_COMMAND_MODULES:
        for command in importlib.import_module(name).COMMANDS:
            cli.add_command(command)


_add_area_commands()


def main() -> None:
    try:
        cli(prog_name="lmkit")
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
