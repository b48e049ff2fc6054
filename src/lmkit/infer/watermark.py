"""The green-list LLM watermark (Kirchenbauer et al. 2023), as a logits processor.

At every step the previous token(s) seed a random generator that splits the vocabulary into
a "green" fraction gamma and a red rest; delta is added to the green logits, so the text
drifts toward green tokens. Anyone holding the key can recount the green tokens of a text
and test whether there are more than chance allows (`infer/watermark_detect.py`); the text
itself reads normally. The seeding follows Hugging Face's `WatermarkLogitsProcessor`
exactly (same generator, same permutation, same hashing), so a text watermarked by either
is detected by both:

    lefthash  the green list of step t depends on token t-1 only (Algorithm 2 of the paper):
              seed = key * x[t-1];  green = randperm(V)[:int(V * gamma)]
    selfhash  it also depends on the candidate token itself (Algorithm 3): for each of the
              40 best candidates c, seed = min over the window w of key * (T[w]+1) * (T[c]+1)
              (T: a fixed random permutation of 1_000_003 entries drawn from the key, w the
              last `context_width` tokens including c); c is green if it is in its own list.
              Harder to scrub by editing, but 40 permutations per step.

Strength: delta (HF's `bias`) 2.0 and gamma (`greenlist_ratio`) 0.25 are the defaults; a
larger delta is easier to detect and costs more perplexity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from lmkit.errors import ConfigError

DEFAULT_KEY = 15485863  # the millionth prime, HF's default; deploy with a private key
TABLE_SIZE = 1_000_003
SELFHASH_CANDIDATES = 40  # HF (and the paper's repository) look at the 40 best candidates only


@dataclass
class WatermarkConfig:
    """The watermark's key and strength; the detector must be given the same values.

    gamma: fraction of the vocabulary that is green (HF: greenlist_ratio).
    delta: logit bonus of green tokens (HF: bias).
    hashing_key: the secret; seeding_scheme: "lefthash" or "selfhash"; context_width:
    tokens that seed the list (selfhash reads the whole window, lefthash only the last).
    vocab_size: size of the permuted vocabulary (None: the width of the model's logits).
    """

    gamma: float = 0.25
    delta: float = 2.0
    hashing_key: int = DEFAULT_KEY
    seeding_scheme: str = "lefthash"
    context_width: int = 1
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < float(self.gamma) < 1.0:
            raise ConfigError(f"watermark gamma must be in (0, 1), got {self.gamma!r}")
        if not isinstance(self.delta, (int, float)) or isinstance(self.delta, bool) or self.delta < 0:
            raise ConfigError(f"watermark delta must be a number >= 0, got {self.delta!r}")
        if self.seeding_scheme not in ("lefthash", "selfhash"):
            raise ConfigError(f"watermark seeding_scheme must be 'lefthash' or 'selfhash', got {self.seeding_scheme!r}")
        if not isinstance(self.context_width, int) or self.context_width < 1:
            raise ConfigError(f"watermark context_width must be an integer >= 1, got {self.context_width!r}")
        if not isinstance(self.hashing_key, int) or isinstance(self.hashing_key, bool):
            raise ConfigError(f"watermark hashing_key must be an integer, got {self.hashing_key!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < 2):
            raise ConfigError(f"watermark vocab_size must be an integer >= 2, got {self.vocab_size!r}")
        self.gamma, self.delta = float(self.gamma), float(self.delta)

    @classmethod
    def coerce(cls, value: "WatermarkConfig | dict[str, Any] | None") -> "WatermarkConfig | None":
        """A config from a dict (JSON), with HF's names (`greenlist_ratio`, `bias`) accepted too."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"watermark must be a WatermarkConfig or a dict, got {type(value).__name__}")
        data = dict(value)
        for hf, ours in (("greenlist_ratio", "gamma"), ("bias", "delta")):
            if hf in data:
                data[ours] = data.pop(hf)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown watermark option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data)

    def to_hf(self) -> dict[str, Any]:
        """The same settings under `transformers.WatermarkingConfig`'s names."""
        return {"greenlist_ratio": self.gamma, "bias": self.delta, "hashing_key": self.hashing_key,
                "seeding_scheme": self.seeding_scheme, "context_width": self.context_width}


@lru_cache(maxsize=4)
def _fixed_table(hashing_key: int) -> torch.Tensor:
    """The selfhash lookup table: a permutation of TABLE_SIZE drawn from the key (as HF)."""
    rng = torch.Generator(device="cpu")
    rng.manual_seed(hashing_key)
    return torch.randperm(TABLE_SIZE, generator=rng)


class GreenList:
    """Which tokens are green after a given context, for one key (shared by processor and detector)."""

    def __init__(self, config: WatermarkConfig, vocab_size: int) -> None:
        self.config = config
        self.vocab_size = int(vocab_size)
        self.size = int(self.vocab_size * config.gamma)
        self.rng = torch.Generator(device="cpu")
        self.table = _fixed_table(config.hashing_key) if config.seeding_scheme == "selfhash" else None

    def seed(self, context: torch.Tensor) -> int:
        """The generator seed for `context` (1-D ids; for selfhash the candidate is its last id)."""
        cfg = self.config
        window = context[-cfg.context_width:]
        if cfg.seeding_scheme == "selfhash":
            a = self.table[window % TABLE_SIZE] + 1
            b = self.table[window[-1] % TABLE_SIZE] + 1
            seed = int((cfg.hashing_key * a * b).min())  # int64 arithmetic, wrapping as HF's does
        else:
            seed = cfg.hashing_key * int(window[-1])
        return seed % (2**64 - 1)

    def ids(self, context: torch.Tensor) -> torch.Tensor:
        """The green ids after `context` (1-D long tensor of token ids)."""
        self.rng.manual_seed(self.seed(context.cpu()))
        return torch.randperm(self.vocab_size, generator=self.rng)[: self.size]

    def is_green(self, context: torch.Tensor, token: int) -> bool:
        return bool((self.ids(context) == int(token)).any())


class WatermarkLogitsProcessor:
    """Adds delta to the green tokens' scores; same protocol as the other processors (sampling.py).

    Left padding (negative ids) is skipped; a row with fewer than `context_width` tokens is
    left unchanged (as HF does for the whole batch).
    """

    def __init__(self, config: WatermarkConfig | dict[str, Any]) -> None:
        self.config = WatermarkConfig.coerce(config)
        self._lists: dict[int, GreenList] = {}

    def green_list(self, vocab_size: int) -> GreenList:
        v = self.config.vocab_size or vocab_size
        if v not in self._lists:
            self._lists[v] = GreenList(self.config, v)
        return self._lists[v]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        greens = self.green_list(scores.shape[-1])
        out = scores.clone()
        for b, row in enumerate(input_ids):
            seq = row[row >= 0].cpu()
            if seq.numel() < cfg.context_width:
                continue
            if cfg.seeding_scheme == "selfhash":
                ids = self._self_green(greens, seq, scores[b])
            else:
                ids = greens.ids(seq)
            if ids.numel():
                ids = ids.to(scores.device)
                out[b, ids] = out[b, ids] + cfg.delta
        return out

    @staticmethod
    def _self_green(greens: GreenList, seq: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """selfhash: of the best candidates, those that are green in their own list."""
        order = scores.sort(dim=-1, descending=True).indices[:SELFHASH_CANDIDATES].cpu()
        found = [int(c) for c in order if greens.is_green(torch.cat([seq, c[None]]), int(c))]
        return torch.tensor(found, dtype=torch.long)
