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


def watermark_options(flag: bool = True):
    """The green-list watermark's options (lmkit.infer.watermark), shared by generate, serve and
    `watermark detect`; the command gets them as one `watermark` dict (None when off).

    flag: add `--watermark` to switch it on (detect always uses the settings)."""

    def decorate(command):
        options = [
            click.option("--watermark-key", "wm_key", type=int, default=15485863, show_default=True,
                         envvar="LMKIT_WATERMARK_KEY", show_envvar=True,
                         help="The secret hashing key (detection needs the same one)."),
            click.option("--watermark-delta", "wm_delta", type=click.FloatRange(0), default=2.0, show_default=True,
                         help="Strength: logit bonus of green tokens (higher: easier to detect, more perplexity)."),
            click.option("--watermark-gamma", "wm_gamma", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                         default=0.25, show_default=True, help="Fraction of the vocabulary that is green."),
            click.option("--watermark-scheme", "wm_scheme", type=click.Choice(["lefthash", "selfhash"]),
                         default="lefthash", show_default=True, help="How the previous tokens seed the green list."),
            click.option("--watermark-context", "wm_context", type=click.IntRange(1), default=1, show_default=True,
                         help="Tokens that seed the green list."),
        ]
        if flag:
            options.append(click.option("--watermark", "wm_on", is_flag=True,
                                        help="Watermark the output (green-list, Kirchenbauer et al.)."))

        def wrapped(*args, wm_key, wm_delta, wm_gamma, wm_scheme, wm_context, wm_on=True, **kwargs):
            settings = {"hashing_key": wm_key, "delta": wm_delta, "gamma": wm_gamma, "seeding_scheme": wm_scheme,
                        "context_width": wm_context}
            return command(*args, watermark=settings if wm_on else None, **kwargs)

        import functools

        wrapped = functools.update_wrapper(wrapped, command)
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped

    return decorate
