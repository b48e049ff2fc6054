"""`GenerationConfig`: every knob of decoding in one validated dataclass.

Field names follow Hugging Face's `GenerationConfig` where the concept exists there
(max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty,
no_repeat_ngram_size, bad_words_ids, num_beams, length_penalty, early_stopping, ...) and
OpenAI's where it does not (presence_penalty, frequency_penalty, stop, logprobs,
top_logprobs), so a request from either world maps over field by field.

Neutral values switch a step off: top_k None/0, top_p 1.0, min_p None, repetition_penalty 1.0,
presence/frequency 0.0, no_repeat_ngram_size 0. Unlike transformers, which samples with
top_k=50 unless told otherwise, sampling here uses the whole distribution unless top_k is set.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from lmkit.errors import ConfigError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    do_sample: bool = False  # False: greedy (or beam search when num_beams > 1)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0  # HF/CTRL: seen logits (prompt included) / p if > 0, * p if < 0
    presence_penalty: float = 0.0  # OpenAI: logit -= presence * [count > 0] over generated tokens
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency * count over generated tokens
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam score = sum logprob / generated_len ** length_penalty
    early_stopping: bool | str = False  # True, False (HF heuristic) or "never" (canonical beam search)
    eos_token_id: int | list[int] | None = None  # None: the model config's
    pad_token_id: int | None = None  # None: the model config's, else the first EOS, else 0
    stop: list[str] | None = None  # stop strings (need a tokenizer); matched across token boundaries
    seed: int | None = None  # None: torch's global RNG
    logprobs: bool = False  # return the log-probability of every chosen token
    top_logprobs: int = 0  # ... and of the this-many most likely alternatives (implies logprobs)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"GenerationConfig.{name}={getattr(self, name)!r}: {why}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size", "top_logprobs"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "must be an integer >= 0")
        for name in ("num_beams", "num_return_sequences"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "must be an integer >= 1")
        if self.min_new_tokens > self.max_new_tokens:
            bad("min_new_tokens", f"must not exceed max_new_tokens={self.max_new_tokens}")
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
                     "length_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number")
            setattr(self, name, float(v))
        if self.temperature < 0:
            bad("temperature", "must be >= 0")
        if self.do_sample and self.temperature == 0:
            bad("temperature", "0 means greedy decoding: set do_sample=False instead (or a positive temperature)")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            bad("top_k", "must be None or an integer >= 0 (0/None: off)")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1] (1: off)")
        if self.min_p is not None:
            if isinstance(self.min_p, bool) or not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p <= 1:
                bad("min_p", "must be None or in [0, 1]")
            self.min_p = float(self.min_p)
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be > 0 (1: off)")
        if self.bad_words_ids is not None:
            ok = isinstance(self.bad_words_ids, (list, tuple)) and len(self.bad_words_ids) > 0 and all(
                isinstance(w, (list, tuple)) and len(w) > 0 and all(is_int(t) and t >= 0 for t in w)
                for w in self.bad_words_ids
            )
            if not ok:
                bad("bad_words_ids", "must be a non-empty list of non-empty lists of token ids >= 0")
            self.bad_words_ids = [list(w) for w in self.bad_words_ids]
        if self.num_return_sequences > 1 and not self.do_sample and self.num_beams == 1:
            bad("num_return_sequences",
                "greedy decoding returns one sequence per prompt: set do_sample=True or num_beams > 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            bad("num_return_sequences", f"must not exceed num_beams={self.num_beams} in beam search")
        if self.early_stopping not in (True, False, "never"):
            bad("early_stopping", "must be True, False or 'never'")
        eos = self.eos_token_id
        if eos is not None:
            if is_int(eos):
                eos = [eos]
            if not isinstance(eos, (list, tuple)) or not all(is_int(t) and t >= 0 for t in eos):
                bad("eos_token_id", "must be None, a token id or a list of token ids (>= 0)")
            self.eos_token_id = list(eos) if len(eos) != 1 else eos[0]
        if self.pad_token_id is not None and (not is_int(self.pad_token_id) or self.pad_token_id < 0):
            bad("pad_token_id", "must be None or a token id >= 0")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                bad("stop", "must be a string or a list of non-empty strings")
            self.stop = list(self.stop) or None
        if self.seed is not None and not is_int(self.seed):
            bad("seed", "must be None or an integer")
        if self.top_logprobs:
            self.logprobs = True
        if self.num_beams > 1 and (self.stop or self.logprobs):
            bad("num_beams", "beam search does not support stop strings or logprobs; use num_beams=1")

    # ---- derived ------------------------------------------------------------------------
    @property
    def eos_ids(self) -> list[int]:
        """EOS ids as a list (empty when there is none)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A validated copy with some fields changed (unknown names are a ConfigError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"GenerationConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return dataclasses.replace(self, **changes)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"GenerationConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GenerationConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"GenerationConfig: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise ConfigError("GenerationConfig: JSON must be an object")
        return cls.from_dict(d)
