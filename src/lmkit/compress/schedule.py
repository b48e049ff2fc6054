"""Sparsity schedules for gradual (iterative) pruning.

Pruning in one shot to a high sparsity removes many weights the network still needs;
pruning in increments with fine-tuning in between lets the remaining weights take over
(Han et al. 2015: prune -> retrain -> prune ...). Zhu & Gupta (2017, "To prune, or not to
prune") give the cubic schedule used by most toolkits:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,   t = t0, t0 + dt, ..., t0 + n*dt

which prunes fast while there are many redundant weights and slowly near the target.
Here the pruning events are numbered i = 1..n (event i at step t0 + (i-1)*dt) and event i
brings the model to s(i) = s_f + (s_i - s_f) * (1 - i/n)^3, so the last event reaches s_f.
"linear" takes equal increments: s(i) = s_i + (s_f - s_i) * i/n.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from lmkit.errors import ConfigError

KINDS = ("cubic", "linear")


@dataclass
class PruneSchedule:
    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    n_prunes: int = 1  # pruning events; 1 = one-shot
    prune_every: int = 50  # fine-tuning steps between two events (dt)
    finetune_steps: int = 100  # fine-tuning steps after the last event
    kind: str = "cubic"

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"PruneSchedule.{name}={getattr(self, name)!r}: {why}")

        for name in ("final_sparsity", "initial_sparsity"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be in [0, 1)")
        if self.initial_sparsity > self.final_sparsity:
            bad("initial_sparsity", f"must not exceed final_sparsity={self.final_sparsity}")
        if not isinstance(self.n_prunes, int) or self.n_prunes < 1:
            bad("n_prunes", "must be an integer >= 1")
        if not isinstance(self.prune_every, int) or self.prune_every < 1:
            bad("prune_every", "must be an integer >= 1")
        if not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            bad("finetune_steps", "must be an integer >= 0")
        if self.kind not in KINDS:
            bad("kind", f"must be one of {KINDS}")

    def sparsity(self, i: int) -> float:
        """Sparsity after pruning event i (1-based)."""
        if not 1 <= i <= self.n_prunes:
            raise ValueError(f"pruning event {i} outside 1..{self.n_prunes}")
        frac = i / self.n_prunes
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        if self.kind == "cubic":
            return s_f + (s_i - s_f) * (1.0 - frac) ** 3
        return s_i + (s_f - s_i) * frac

    def events(self) -> list[tuple[int, float]]:
        """[(step at which to prune, target sparsity)] for every event."""
        return [((i - 1) * self.prune_every, self.sparsity(i)) for i in range(1, self.n_prunes + 1)]

    @property
    def total_steps(self) -> int:
        return (self.n_prunes - 1) * self.prune_every + self.finetune_steps

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
