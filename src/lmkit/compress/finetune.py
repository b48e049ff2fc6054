"""Prune, then fine-tune with the masks held fixed — one-shot or iterative (gradual).

`prune_model` dispatches on the method name used by the CLI:
  magnitude  layer-wise magnitude pruning (every layer to the same sparsity)
  global     global magnitude pruning (one threshold over all targets)
  N:M        e.g. 2:4 structured sparsity (the sparsity is N/M by construction)
  neurons    remove that fraction of every FFN's intermediate channels (a smaller dense model;
             structured.py) — one-shot only, since the parameters are replaced

`prune_and_finetune` runs lmkit's Trainer for `schedule.total_steps` steps, pruning at each
of the schedule's events and re-applying the masks after every optimizer step, and reports
held-out loss/perplexity of the dense model, right after the (last) pruning and at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from torch import nn

from lmkit.compress.magnitude import magnitude_prune
from lmkit.compress.masks import keep_masks, sparsity_report
from lmkit.compress.nm_sparsity import parse_nm, prune_nm
from lmkit.compress.schedule import PruneSchedule
from lmkit.errors import ConfigError

METHODS = ("magnitude", "global", "N:M (e.g. 2:4)", "neurons")


def prune_model(model: nn.Module, sparsity: float | None, method: str = "magnitude",
                targets: Iterable[str] | str | None = None) -> dict:
    """Prune `model` in place; returns the masks {module name: 0/1 tensor}."""
    if method == "magnitude":
        return magnitude_prune(model, sparsity, "layer", targets)
    if method == "global":
        return magnitude_prune(model, sparsity, "global", targets)
    if method == "neurons":
        from lmkit.compress.structured import prune_ffn_neurons

        if sparsity is None or not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity={sparsity!r}: the fraction of FFN channels to remove, in [0, 1)")
        d_ff = model.config.d_ff
        return prune_ffn_neurons(model, max(1, d_ff - round(sparsity * d_ff)))
    if ":" in method:
        n, m = parse_nm(method)
        if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
            raise ConfigError(f"{method} sparsity is {1 - n / m:g} by construction; got sparsity={sparsity}")
        return prune_nm(model, n, m, targets)
    raise ConfigError(f"unknown pruning method {method!r}; use one of {METHODS}")


def prune_and_finetune(
    model: nn.Module,
    train_config,
    train_data: Iterable,
    eval_data: Iterable | None = None,
    *,
    schedule: PruneSchedule,
    method: str = "magnitude",
    targets: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Gradually prune `model` to schedule.final_sparsity while training it.

    Returns {"dense": eval metrics before pruning (if eval_data), "pruned": right after the
    last pruning event, before its fine-tuning, "finetuned": at the end, "sparsity": the
    final report, "events": [(step, sparsity)], "history": the Trainer's records}.
    """
    from lmkit.train.trainer import Trainer

    if ":" in method:
        n, m = parse_nm(method)
        if schedule.n_prunes != 1 or abs(schedule.final_sparsity - (1 - n / m)) > 1e-9:
            raise ConfigError(
                f"{method} sparsity is a fixed pattern: use one pruning event (n_prunes=1) "
                f"and final_sparsity={1 - n / m:g}"
            )
    total = max(schedule.total_steps, 1)
    cfg = dataclasses.replace(train_config, max_steps=total, warmup_steps=min(train_config.warmup_steps, total))
    result: dict[str, Any] = {"events": schedule.events()}
    if method == "neurons":  # the modules are replaced: prune first, then build the optimizer
        if schedule.n_prunes != 1:
            raise ConfigError("neuron pruning replaces the FFN modules: use one pruning event (n_prunes=1)")
        if eval_data is not None:
            result["dense"] = Trainer(model, cfg, train_data, eval_data).evaluate()
        prune_model(model, schedule.final_sparsity, method)
        trainer = Trainer(model, cfg, train_data, eval_data)
        if eval_data is not None:
            result["pruned"] = trainer.evaluate()
        if schedule.total_steps:
            trainer.train()
        if eval_data is not None:
            result["finetuned"] = trainer.evaluate()
        result["parameters"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        result["history"] = trainer.history
        return result
    trainer = Trainer(model, cfg, train_data, eval_data)
    hook = keep_masks(trainer)
    try:
        if eval_data is not None:
            result["dense"] = trainer.evaluate()
        events = schedule.events()
        for i, (step, sparsity) in enumerate(events):
            prune_model(trainer.raw_model, None if ":" in method else sparsity, method, targets)
            if i == len(events) - 1 and eval_data is not None:
                result["pruned"] = trainer.evaluate()
            until = events[i + 1][0] if i + 1 < len(events) else total
            if schedule.total_steps and until > trainer.step:
                trainer.train(until=until)
        if eval_data is not None:
            result["finetuned"] = trainer.evaluate()
    finally:
        hook.remove()
    result["sparsity"] = sparsity_report(trainer.raw_model, targets)
    result["history"] = trainer.history
    return result
