"""`GenerationConfig`: every decoding knob in one validated dataclass.

Field names follow Hugging Face's `GenerationConfig` where one exists (max_new_tokens,
do_sample, temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size,
bad_words_ids, num_beams, length_penalty, early_stopping, eos_token_id, pad_token_id) and
OpenAI's API otherwise (presence_penalty, frequency_penalty, stop, seed, logprobs,
top_logprobs), so a reader of either documentation knows what each one does.

Neutral values switch a knob off: temperature 1.0, top_k 0/None, top_p 1.0, min_p None,
penalties 1.0 (repetition) or 0.0 (presence, frequency), no_repeat_ngram_size 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from lmkit.errors import ConfigError
from lmkit.infer.watermark import WatermarkConfig


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    do_sample: bool = False  # False: greedy (or beam search when num_beams > 1)

    # warpers (sampling only), applied in this order after the processors
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float | None = None

    # processors (every mode)
    repetition_penalty: float = 1.0  # HF/CTRL: prompt and generated tokens, divide >0 / multiply <0 logits
    presence_penalty: float = 0.0  # OpenAI: logit -= presence * [count > 0], generated tokens only
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency * count, generated tokens only
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None

    # beam search
    num_beams: int = 1
    length_penalty: float = 1.0  # finished score = sum logprob / generated_len ** length_penalty
    early_stopping: bool | str = False  # True, False (HF heuristic) or "never"

    # stopping
    eos_token_id: int | list[int] | None = None  # None: the model config's eos_token_id
    pad_token_id: int | None = None  # fed after a row finished; None: pad, else first EOS, else 0
    stop: list[str] | None = None  # stop strings (need a tokenizer); matched across token boundaries

    # randomness and outputs
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    # engine
    fused: bool = True  # lean fused decode step where the architecture allows (same results, less overhead)
    # torch.compile'd static-cache decode step (infer/compiled_step.py): fastest on CPU once compiled, but the
    # first call per (batch, cache length) compiles for ~10 s (generate rounds the length up to a power of
    # two, so a few compiles cover every length); worth it for servers and benchmarks
    compile: bool = False
    # "int8": keys / values stored as int8 with a scale per (head, token) (models/quantized_kv_cache.py):
    # ~0.27x the memory of an fp32 cache for long contexts, at a small cost in accuracy and step time
    kv_cache_dtype: str = "auto"

    # green-list watermark (infer/watermark.py): a WatermarkConfig, or a dict of its fields; None: off
    watermark: WatermarkConfig | dict | None = None

    extra: dict[str, Any] = field(default_factory=dict)  # ignored by lmkit; kept for callers

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.eos_token_id, (list, tuple)):
            self.eos_token_id = [int(i) for i in self.eos_token_id]
        self._check_int("max_new_tokens", low=1)
        self._check_int("min_new_tokens", low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens={self.min_new_tokens} is larger than max_new_tokens={self.max_new_tokens}"
            )
        for name in ("do_sample", "logprobs", "fused", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.kv_cache_dtype not in ("auto", "int8"):
            raise ConfigError(f"kv_cache_dtype must be 'auto' or 'int8', got {self.kv_cache_dtype!r}")
        if self.kv_cache_dtype == "int8" and self.compile:
            raise ConfigError("compile=True runs a float static cache; it cannot be combined with kv_cache_dtype='int8'")
        self._check_float("temperature", low=0.0, low_open=True)
        if self.top_k is not None:
            self._check_int("top_k", low=0)
        self._check_float("top_p", low=0.0, high=1.0, low_open=True)
        if self.min_p is not None:
            self._check_float("min_p", low=0.0, high=1.0)
        self._check_float("repetition_penalty", low=0.0, low_open=True)
        self._check_float("presence_penalty", low=-2.0, high=2.0)
        self._check_float("frequency_penalty", low=-2.0, high=2.0)
        self._check_int("no_repeat_ngram_size", low=0)
        if self.bad_words_ids is not None:
            ok = isinstance(self.bad_words_ids, (list, tuple)) and len(self.bad_words_ids) > 0 and all(
                isinstance(seq, (list, tuple)) and len(seq) > 0 and all(_is_int(t) and t >= 0 for t in seq)
                for seq in self.bad_words_ids
            )
            if not ok:
                raise ConfigError(
                    f"bad_words_ids must be a non-empty list of non-empty lists of token ids, got {self.bad_words_ids!r}"
                )
            self.bad_words_ids = [[int(t) for t in seq] for seq in self.bad_words_ids]
        self._check_int("num_beams", low=1)
        self._check_float("length_penalty")
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.eos_token_id is not None:
            ids = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
            if not all(_is_int(i) and i >= 0 for i in ids):
                raise ConfigError(f"eos_token_id must be a token id or a list of them, got {self.eos_token_id!r}")
        if self.pad_token_id is not None and not (_is_int(self.pad_token_id) and self.pad_token_id >= 0):
            raise ConfigError(f"pad_token_id must be a token id (int >= 0), got {self.pad_token_id!r}")
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                raise ConfigError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
            self.stop = list(self.stop)
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self._check_int("top_logprobs", low=0, high=20)
        if self.watermark is not None:
            self.watermark = WatermarkConfig.coerce(self.watermark)
        if self.top_logprobs and not self.logprobs:
            self.logprobs = True  # asking for alternatives implies the chosen token's logprob too
        if self.num_beams > 1:
            if self.stop:
                raise ConfigError("stop strings are not supported with beam search (num_beams > 1); use eos_token_id")
            if self.logprobs:
                raise ConfigError("logprobs are not returned by beam search (num_beams > 1); see GenerationOutput.scores")
            if self.presence_penalty or self.frequency_penalty:
                raise ConfigError("presence/frequency penalties are sampling-API options; not supported with num_beams > 1")

    # ---- validation helpers -------------------------------------------------------------
    def _check_int(self, name: str, low: int | None = None, high: int | None = None) -> None:
        value = getattr(self, name)
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")

    def _check_float(
        self, name: str, low: float | None = None, high: float | None = None, low_open: bool = False
    ) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{name} must be <= {high}, got {value!r}")
        setattr(self, name, float(value))

    # ---- convenience --------------------------------------------------------------------
    def replace(self, **overrides: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated again); unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **overrides)

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationConfig":
        return cls().replace(**data)

    @classmethod
    def from_json(cls, text: str) -> "GenerationConfig":
        return cls.from_dict(json.loads(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
