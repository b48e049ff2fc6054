"""Continued pretraining (增量预训练) on a domain, and the remedies for the forgetting it causes.

`lmkit pretrain --init-from CHECKPOINT` starts from a trained model instead of random
weights. Training on the domain alone raises the loss on the general text the model was
trained on (catastrophic forgetting, 灾难性遗忘); `ContinualConfig` names the remedies:

  replay          a fraction `replay_ratio` of the training sequences is drawn from the
                  general data (data/mixture.py's `MixtureDataset`, fixed weights);
  ewc / l2sp      a weight penalty towards the starting weights (train/forgetting_penalty.py),
                  EWC weighted by the diagonal Fisher on the general data;
  re-warmup       the optimizer starts fresh (no moments from the original run), so the
                  learning rate warms up again: ``train.warmup_steps``, by default 5 % of
                  the steps when starting from a checkpoint;
  new rows only   after vocabulary expansion, `new_rows_only_from` trains only the embedding
                  and LM-head rows of the new tokens (hub/expand_vocab.py) first.

Forgetting is measured as the perplexity on the general data's validation split before and
after (``general_ppl_before`` / ``general_ppl_after`` in the run's result).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmkit.errors import ConfigError

PENALTIES = ("none", "ewc", "l2sp")


@dataclass
class ContinualConfig:
    general_data: str | None = None  # shard directory of the general (old) data, same tokenizer
    replay_ratio: float = 0.0  # fraction of training sequences drawn from general_data
    penalty: str = "none"  # none | ewc | l2sp
    penalty_weight: float = 0.0  # λ
    fisher_samples: int = 64  # sequences of general data for EWC's Fisher
    new_rows_only_from: int | None = None  # train only embedding/head rows >= this id

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise ConfigError(f"continual.penalty={self.penalty!r}: must be one of {PENALTIES}")
        if not 0.0 <= self.replay_ratio < 1.0:
            raise ConfigError(f"continual.replay_ratio={self.replay_ratio!r}: must be in [0, 1)")
        if self.penalty_weight < 0:
            raise ConfigError(f"continual.penalty_weight={self.penalty_weight!r}: must be >= 0")
        if self.fisher_samples < 1:
            raise ConfigError(f"continual.fisher_samples={self.fisher_samples!r}: must be >= 1")
        if (self.replay_ratio > 0 or self.penalty == "ewc") and not self.general_data:
            raise ConfigError("continual.general_data (a shard directory) is needed for replay and for EWC's Fisher")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContinualConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"continual: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def replay_mixture(domain_loader, general_loader, ratio: float, batch_size: int, seed: int):
    """Training batches with a fraction `ratio` of general sequences mixed into the domain ones
    (per example; resumable). One epoch = the domain set once, plus its share of replay."""
    from lmkit.data.mixture import MixtureDataset

    domain, general = domain_loader.dataset, general_loader.dataset
    per_epoch = int(round(len(domain) / (1.0 - ratio)))
    return MixtureDataset({"domain": domain, "general": general}, weights={"domain": 1.0 - ratio, "general": ratio},
                          samples_per_epoch=max(per_epoch, batch_size), batch_size=batch_size,
                          collate_fn=domain_loader.collate_fn, seed=seed)


def evaluate_on(trainer, loader) -> dict[str, float]:
    """`trainer.evaluate()` on another data set (e.g. the general validation split)."""
    saved = trainer.eval_data
    trainer.eval_data = loader
    try:
        return trainer.evaluate()
    finally:
        trainer.eval_data = saved


def build_penalty(cfg: ContinualConfig, model, general_loader):
    """The Trainer's penalty for `cfg` (None without one)."""
    from lmkit.train.forgetting_penalty import ewc_penalty, l2sp_penalty

    if cfg.penalty == "none" or cfg.penalty_weight == 0:
        return None
    if cfg.penalty == "l2sp":
        return l2sp_penalty(model, cfg.penalty_weight)
    return ewc_penalty(model, iter(general_loader), cfg.penalty_weight, cfg.fisher_samples)
