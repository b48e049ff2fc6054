"""`lmkit merge-models`: merge fine-tunes of one base (full checkpoints or LoRA adapters).

    lmkit merge-models --method linear|slerp|soup|task_arithmetic|ties|dare_ties|dare_linear \
        [--base BASE] --models M1 M2 ... [--weights 0.5 0.5] [--density 0.2] [--lam 1.0] \
        [--t 0.5] [--seed 0] [--lora-combine delta|cat|linear] --out DIR
"""

from __future__ import annotations

import click

from lmkit.edit.merge_checkpoint import LORA_COMBINE
from lmkit.edit.merge_state import MERGE_METHODS


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give numbers separated by spaces or commas") from exc


@click.command("merge-models")
@click.option("--method", type=click.Choice(MERGE_METHODS), required=True)
@click.option("--base", type=click.Path(exists=True, file_okay=False), default=None,
              help="the model the others were fine-tuned from (task_arithmetic, ties, dare_*; slerp's start; "
                   "the base of LoRA adapters)")
@click.option("--models", "models", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="checkpoints or adapter folders to merge; repeat the option or list them after one --models")
@click.option("--weights", callback=_floats, default=None, help="one weight per model, e.g. '0.5 0.5' (default all 1)")
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
@click.argument("more_models", nargs=-1, type=click.Path(exists=True, file_okay=False))
def merge_models_cmd(method, base, models, weights, density, lam, t, seed, no_normalize, lora_combine, out,
                     more_models):
    """Merge fine-tunes of one base into one model (weight averaging, SLERP, soups, task
    arithmetic, TIES, DARE)."""
    from lmkit.edit.merge_checkpoint import merge_checkpoints
    from lmkit.edit.merge_state import MergeConfig

    cfg = MergeConfig(method=method, weights=weights, density=density, lam=lam, t=t, seed=seed,
                      normalize=not no_normalize)
    summary = merge_checkpoints(list(models) + list(more_models), cfg, out, base=base, lora_combine=lora_combine)
    what = f"adapter of rank {summary['r']}" if summary["kind"] == "adapter" else f"{summary['tensors']} tensors"
    click.echo(f"{method}: merged {len(models) + len(more_models)} model(s) -> {out} ({what})")


COMMANDS: list[click.Command] = [merge_models_cmd]
