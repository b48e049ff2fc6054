"""The two sizes of `lmkit speedrun`: `tiny` (the test suite's guard, about a minute on 2 cores)
and `full` (the benchmark, at most 30 minutes on 2 cores), with every stage's threshold.

A threshold is what the stage must reach for the run to pass; the tiny profile's are looser
(its model has a few thousand training tokens' worth of steps) but each still fails when the
stage stops doing its job (e.g. SFT no longer lowers the held-out reply loss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmkit.errors import ConfigError

STAGES = ("data", "tokenizer", "pretrain", "sft", "dpo", "eval", "quantize", "gguf", "serve", "rag")


@dataclass(frozen=True)
class SpeedrunProfile:
    name: str
    corpus: str  # "topics": Python's language reference only (fast); "english": lmkit.corpus.english_text()
    corpus_chars: int | None  # cut the corpus to this many characters (None: all of it)
    held_out: str  # "tail": the topics after the training cut; "docstrings": lmkit's own docstrings
    held_out_chars: int
    vocab_size: int
    model: dict[str, Any]
    seq_len: int
    batch_size: int
    pretrain_steps: int
    pretrain_lr: float
    sft_steps: int
    sft_lr: float
    dpo_steps: int
    dpo_lr: float
    dpo_beta: float
    batch_pairs: int
    n_eval_terms: int  # (term, definition) pairs held out of SFT and DPO for the instruction tasks
    int4_group: int
    budget_s: float  # the profile's time budget (the card reports total / budget)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_eval_terms < 4:
            raise ConfigError(f"SpeedrunProfile.n_eval_terms must be >= 4 (4-way multiple choice), got {self.n_eval_terms}")
        for key in ("pretrain_steps", "sft_steps", "dpo_steps", "vocab_size", "seq_len", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"SpeedrunProfile.{key} must be >= 1, got {getattr(self, key)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _llama(**fields: Any) -> dict[str, Any]:
    """The llama-tiny preset (models/presets.py) with `fields` changed."""
    from lmkit.models.presets import PRESETS

    return {**PRESETS["llama-tiny"], **fields}

# Thresholds shared by both profiles unless a profile overrides them.
_THRESHOLDS = {
    "bytes_per_token_min": 1.5,  # the BPE must compress (bytes are 1.0)
    "ppl_over_unigram_max": 1.0,  # pretraining must beat the unigram model of the same tokens
    "sft_loss_delta_max": 0.0,  # SFT must lower the held-out reply loss (SFT - base < 0)
    "dpo_acc_gain_min": 0.0,  # preference accuracy after DPO - before (> 0 with strict_dpo)
    "mc_acc_min": 0.25,  # 4-way multiple choice: chance
    "int8_ppl_ratio_max": 1.005,  # int8 within 0.5 % perplexity of fp32
    "int4_ppl_ratio_max": 1.25,
    "gguf_ppl_ratio_max": 1.01,  # q8_0 GGUF read back within 1 % perplexity of fp32
    "rag_hit5_min": 0.8,
    "overlap_after_max": 0,  # eval items still found in the training data after decontamination
    "strict_dpo": 1,
}

TINY = SpeedrunProfile(
    name="tiny", corpus="topics", corpus_chars=240_000, held_out="tail", held_out_chars=6_000, vocab_size=512,
    model=_llama(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256),
    seq_len=64, batch_size=16, pretrain_steps=200, pretrain_lr=5e-3, sft_steps=60, sft_lr=2e-3,
    dpo_steps=30, dpo_lr=2e-3, dpo_beta=0.1, batch_pairs=8, n_eval_terms=16, int4_group=32, budget_s=60.0,
    thresholds={**_THRESHOLDS, "int8_ppl_ratio_max": 1.01, "int4_ppl_ratio_max": 1.5, "mc_acc_min": 0.0,
                "strict_dpo": 0},
)

FULL = SpeedrunProfile(
    name="full", corpus="english", corpus_chars=None, held_out="docstrings", held_out_chars=20_000, vocab_size=2048,
    model=_llama(),
    seq_len=128, batch_size=16, pretrain_steps=1200, pretrain_lr=3e-3, sft_steps=60, sft_lr=1e-3,
    dpo_steps=40, dpo_lr=5e-4, dpo_beta=0.1, batch_pairs=8, n_eval_terms=24, int4_group=32, budget_s=1800.0,
    thresholds=dict(_THRESHOLDS),
)

PROFILES = {"tiny": TINY, "full": FULL}


def get_profile(name: str) -> SpeedrunProfile:
    if name not in PROFILES:
        raise ConfigError(f"speedrun profile {name!r}: choose one of {sorted(PROFILES)}")
    return PROFILES[name]
