"""The tuned editing settings that `bench/bench_editing.py` measured and `lmkit edit` uses: one place.

The library's dataclass defaults (`TargetVectorConfig`, `MemitConfig.cov_weight`) suit one or a few
edits; at 100 edits their large targets and fixed λ wreck the edited layer (docs/editing.md,
"What was wrong"). These are the values the benchmark's sweep chose for 1 to 100 edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only when a config is built: `lmkit --help` reads these defaults
    from lmkit.edit.memit import MemitConfig
    from lmkit.edit.rome import RomeConfig
    from lmkit.edit.target_vector import TargetVectorConfig


@dataclass(frozen=True)
class EditSettings:
    """MEMIT: ‖z − h‖ ≤ clamp·‖h‖, stop at NLL stop_nll, λ = cov_weight_per_edit × edits (K Kᵀ grows
    with the batch, so λ does too), the bare and the prefixed prompts' keys apart (memit_keys), a
    fact whose target at the top layer cannot reach its answer written at the lowest (memit_reach_nll);
    ROME: its own clamp and stop, earlier keys kept with keep_weight
    unless their C⁻¹-cosine with the new key reaches keep_max_cosine (rome.keys_to_keep);
    C from the statements plus generic_paragraphs texts of 6 random statements; MEMIT's layers are
    those whose hidden state at the subject keeps >= spread_fraction of the peak traced effect."""

    clamp: float = 6.0
    rome_clamp: float = 2.0
    weight_decay: float = 0.5
    stop_nll: float = 0.02
    rome_stop_nll: float = 0.02
    bare_weight: float | None = None  # 0.5 measured: docs/editing.md, "Five draws"
    cov_weight_per_edit: float = 4.0
    memit_keys: str = "split"  # "split": bare and prefixed keys apart; "mean": the paper's mean key (memit.py)
    memit_reach_nll: float | None = 0.693  # ln 2: a fact whose top target leaves P(target) < 1/2 goes to layer 0
    keep_weight: float = 10.0
    keep_max_cosine: float = 0.5
    generic_paragraphs: int = 1000
    spread_fraction: float = 0.9

    def __post_init__(self) -> None:
        if self.memit_keys not in ("split", "mean"):
            from lmkit.errors import ConfigError

            raise ConfigError(f'memit_keys is "split" or "mean", got {self.memit_keys!r}')

    def memit_target(self) -> TargetVectorConfig:
        from lmkit.edit.target_vector import TargetVectorConfig

        return TargetVectorConfig(clamp_norm=self.clamp, weight_decay=self.weight_decay, stop_nll=self.stop_nll,
                                  bare_weight=self.bare_weight)

    def rome_target(self) -> TargetVectorConfig:
        from lmkit.edit.target_vector import TargetVectorConfig

        return TargetVectorConfig(clamp_norm=self.rome_clamp, weight_decay=self.weight_decay,
                                  stop_nll=self.rome_stop_nll, bare_weight=self.bare_weight)

    def memit_config(self, layers: list[int], n_edits: int) -> MemitConfig:
        from lmkit.edit.memit import MemitConfig

        return MemitConfig(layers, self.cov_weight_per_edit * n_edits, self.memit_target(),
                           split_keys=self.memit_keys == "split", reach_nll=self.memit_reach_nll)

    def rome_config(self, layer: int) -> RomeConfig:
        from lmkit.edit.rome import RomeConfig

        return RomeConfig(layer, self.rome_target())


BENCH_SETTINGS = EditSettings()
