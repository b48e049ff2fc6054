"""`lmkit merge-models`: merge fine-tunes of one base (full checkpoints or LoRA adapters).

    lmkit merge-models --method linear|slerp|soup|task_arithmetic|ties|dare_ties|dare_linear \
        [--base BASE] --models M1 M2 ... [--weights 0.5 0.5] [--density 0.2] [--lam 1.0] \
        [--t 0.5] [--seed 0] [--lora-combine delta|cat|linear] --out DIR

--models and --weights take every value up to the next option (`--models A B --weights 1 0.5`).
"""

from __future__ import annotations

import click

from lmkit.edit.merge_checkpoint import LORA_COMBINE
from lmkit.edit.merge_state import MERGE_METHODS


def _is_option(token: str) -> bool:
    """A token that starts the next option (negative numbers are values: --weights 1 -0.5)."""
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True


class GreedyOption(click.Option):
    """A multiple option that also takes the values after it up to the next option:
    `--models A B` is `--models A --models B`. (Uses click's parser tables; where they are not
    there, it is an ordinary repeatable option.)"""

    def add_to_parser(self, parser, ctx):
        result = super().add_to_parser(parser, ctx)
        table = {**getattr(parser, "_long_opt", {}), **getattr(parser, "_short_opt", {})}
        for name in self.opts:
            opt = table.get(name)
            if opt is not None:
                previous = opt.process

                def process(value, state, previous=previous):
                    values = [value]
                    while state.rargs and not _is_option(state.rargs[0]):
                        values.append(state.rargs.pop(0))
                    for v in values:
                        previous(v, state)

                opt.process = process
                break
        return result


def _floats(ctx, param, value):
    if not value:
        return None
    try:
        return tuple(float(v) for item in value for v in item.replace(",", " ").split())
    except ValueError as exc:
        raise click.BadParameter(f"{' '.join(value)!r}: give numbers separated by spaces or commas") from exc


@click.command("merge-models")
@click.option("--method", type=click.Choice(MERGE_METHODS), required=True)
@click.option("--base", type=click.Path(exists=True, file_okay=False), default=None,
              help="the model the others were fine-tuned from (task_arithmetic, ties, dare_*; slerp's start; "
                   "the base of LoRA adapters)")
@click.option("--models", "models", cls=GreedyOption, required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False), help="checkpoints or adapter folders to merge")
@click.option("--weights", cls=GreedyOption, multiple=True, callback=_floats,
              help="one weight per model, e.g. --weights 0.5 0.5 (default all 1)")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="fraction of each task vector kept: ties (top by magnitude, default 0.2), dare_* (random, default 0.5)")
@click.option("--lam", type=float, default=1.0, show_default=True, help="λ, the scale of the merged task vector")
@click.option("--t", "t", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="slerp: 0 gives the first end (the base, else the first model), 1 the second")
@click.option("--seed", type=int, default=0, show_default=True, help="DARE's random drop masks")
@click.option("--no-normalize", is_flag=True, help="linear: Σ w_i θ_i without dividing by Σ w_i")
@click.option("--lora-combine", type=click.Choice(LORA_COMBINE), default="delta", show_default=True,
              help="LoRA adapters: delta merges s·B·A into a full checkpoint; cat (exact, rank Σ r) or linear "
                   "(PEFT's approximation) write a new adapter")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
def merge_models_cmd(method, base, models, weights, density, lam, t, seed, no_normalize, lora_combine, out):
    """Merge fine-tunes of one base into one model (weight averaging, SLERP, soups, task
    arithmetic, TIES, DARE)."""
    from lmkit.edit.merge_checkpoint import merge_checkpoints
    from lmkit.edit.merge_state import MergeConfig

    cfg = MergeConfig(method=method, weights=weights, density=density, lam=lam, t=t, seed=seed,
                      normalize=not no_normalize)
    summary = merge_checkpoints(list(models), cfg, out, base=base, lora_combine=lora_combine)
    what = f"adapter of rank {summary['r']}" if summary["kind"] == "adapter" else f"{summary['tensors']} tensors"
    click.echo(f"{method}: merged {len(models)} model(s) -> {out} ({what})")


COMMANDS: list[click.Command] = [merge_models_cmd]
