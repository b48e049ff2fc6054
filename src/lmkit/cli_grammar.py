"""The one grammar every `lmkit` command follows, and the pieces that enforce it.

`COMMAND MODEL [DATA]` positional order, `--steps` for a number of optimizer steps,
`-o/--out` for the output, and no length beyond the model's context. Old spellings keep
working for a while as hidden aliases that print a deprecation note.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from lmkit.errors import ConfigError


def deprecation_note(old: str, new: str) -> None:
    """Tell the user (on stderr, so JSON on stdout stays clean) which spelling replaces theirs."""
    click.echo(f"note: {old} is deprecated and will be removed; use {new}", err=True)


class RenamedOptionsCommand(click.Command):
    """A command that still accepts renamed options under their old spelling.

    The old spellings are not declared options, so `--help` shows only the new ones;
    `renamed` maps each old spelling (e.g. "--max-steps") to the new one ("--steps").
    """

    def __init__(self, *args, renamed: Mapping[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                out.extend(args[i:])
                break
            name, eq, value = arg.partition("=")
            if name in self.renamed:
                deprecation_note(name, self.renamed[name])
                arg = self.renamed[name] + eq + value
            out.append(arg)
        return super().parse_args(ctx, out)


def model_then_data(model: str, data: str, command: str) -> tuple[str, str]:
    """(MODEL, DATA) in the grammar's order; the old `COMMAND DATA MODEL` order (a data file
    first, a model directory second) still works, with a deprecation note."""
    if Path(model).is_file() and Path(data).is_dir():
        deprecation_note(f"`lmkit {command} DATA MODEL`", f"`lmkit {command} MODEL DATA`")
        return data, model
    if not Path(model).is_dir():
        raise click.BadParameter(f"{model!r} is not a model directory", param_hint="MODEL")
    if not Path(data).is_file():
        raise click.BadParameter(f"{data!r} is not a data file", param_hint="DATA")
    return model, data


def positional_or_option(value: str | None, old_value: str | None, name: str, old: str) -> str:
    """An argument that used to be an option (`--data FILE`, now `DATA`): either spelling works,
    the old one with a deprecation note; giving neither, or both, is a usage error."""
    if value is not None and old_value is not None:
        raise click.UsageError(f"give {name} once: as an argument, not also as {old}")
    if old_value is not None:
        deprecation_note(f"{old} {name}", f"{name} as an argument")
        return old_value
    if value is None:
        raise click.UsageError(f"missing argument {name}")
    return value


def check_fits_context(option: str, value: int | None, context: int) -> None:
    """A length option beyond the model's context is an error, never silently accepted."""
    if value is not None and value > context:
        raise ConfigError(f"{option} {value} is longer than the model's context of {context} tokens; "
                          f"use at most {context}")


def progress_flags(command):
    """Add ``--quiet`` and ``--log-json`` to a long-running command.

    They choose the progress form of every loop the command runs (lmkit.progress): ``--quiet``
    prints no progress, ``--log-json`` one JSON object per progress line. The choice goes
    through ``LMKIT_PROGRESS`` so that it reaches loops deep inside the library unchanged."""

    def choose(mode: str):
        def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
            if value:
                import os

                from lmkit.progress import ENV_VAR

                os.environ[ENV_VAR] = mode
        return callback

    command = click.option("--log-json", is_flag=True, expose_value=False, callback=choose("json"),
                           help="Progress as one JSON object per line (for log collectors).")(command)
    return click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=choose("off"),
                        help="No progress output.")(command)


LOAD_DTYPES = ("auto", "fp32", "bf16", "fp16")


def dtype_option(default: str = "auto"):
    """`--dtype auto|fp32|bf16|fp16`, the one option every command that loads a checkpoint uses:
    the floating dtype its weights are loaded in (auto: the checkpoint's own). The value stays
    a name; `hub.load_pretrained(dtype=...)` takes it as it is."""
    return click.option("--dtype", type=click.Choice(LOAD_DTYPES), default=default, show_default=True,
                        help="Load the weights in this dtype (auto: as stored in the checkpoint); "
                             "each tensor is cast as it is read, so bf16/fp16 need half the memory of fp32.")
