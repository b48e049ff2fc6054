"""EDA: easy data augmentation for small labelled text sets (Wei & Zou 2019), plus masking.

Each augmented copy applies one operation to the text and keeps every other field (the label
above all) unchanged:

* ``sr``: synonym replacement: n = max(1, alpha·len) non-stop words replaced by a synonym;
* ``ri``: random insertion: a synonym of a random word inserted at a random place, n times;
* ``rs``: random swap: two random words exchange places, n times;
* ``rd``: random deletion: each word deleted with probability p (one word always stays);
* ``mask``: span masking: one span of ~alpha·len words replaced by a single mask token;
* ``shuffle``: sentence shuffling: the sentences of the text in a random order.

Every copy is drawn from its own `random.Random` keyed by (seed, record index, copy number),
so the output depends only on the seed and the input, not on the order of calls or on the
Python hash seed. Words are whitespace tokens; text with Han characters is split into
characters (and joined without spaces) so that Chinese examples can be augmented too.
Synonyms come from `lmkit.data.synonyms` unless a table is given.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from lmkit.data.filters.words import HAN_CHAR
from lmkit.data.synonyms import synonym_table
from lmkit.errors import ConfigError

OPERATIONS = ("sr", "ri", "rs", "rd", "mask", "shuffle")
STOP_WORDS = frozenset("a an the of to in on at for and or but is are was were be been it this that with as by "
                       "from i you he she we they not no do does did".split())
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*")


@dataclass
class EDAConfig:
    """How strongly and how often to augment."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    alpha_mask: float = 0.15
    mask_token: str = "<mask>"
    num_aug: int = 4  # augmented copies per example
    operations: tuple[str, ...] = ("sr", "ri", "rs", "rd")
    seed: int = 0
    keep_original: bool = True

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad or not self.operations:
            raise ConfigError(f"operations={list(self.operations)}: choose from {', '.join(OPERATIONS)}")
        for name in ("alpha_sr", "alpha_ri", "alpha_rs", "p_rd", "alpha_mask"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.num_aug < 0:
            raise ConfigError(f"num_aug={self.num_aug} must be >= 0")


def split_units(text: str) -> tuple[list[str], str]:
    """(words, joiner): Han-character text by characters, anything else by whitespace."""
    if HAN_CHAR.search(text):
        return [c for c in text if not c.isspace()], ""
    return text.split(), " "


@dataclass
class EDAugmenter:
    """Seeded EDA over texts and labelled records."""

    config: EDAConfig = field(default_factory=EDAConfig)
    synonyms: Mapping[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if self.synonyms is None:
            self.synonyms = synonym_table()

    def _n(self, alpha: float, words: list[str]) -> int:
        return max(1, int(alpha * len(words)))

    def _synonyms_of(self, word: str) -> list[str]:
        lower = word.lower()
        return [s for s in self.synonyms.get(lower, []) if s != lower]

    def synonym_replacement(self, words: list[str], rng: random.Random) -> list[str]:
        out = list(words)
        candidates = [i for i, w in enumerate(words) if w.lower() not in STOP_WORDS and self._synonyms_of(w)]
        rng.shuffle(candidates)
        for i in candidates[: self._n(self.config.alpha_sr, words)]:
            out[i] = rng.choice(self._synonyms_of(words[i]))
        return out

    def random_insertion(self, words: list[str], rng: random.Random) -> list[str]:
        out = list(words)
        for _ in range(self._n(self.config.alpha_ri, words)):
            options = [w for w in out if self._synonyms_of(w)]
            if not options:
                break
            out.insert(rng.randint(0, len(out)), rng.choice(self._synonyms_of(rng.choice(options))))
        return out

    def random_swap(self, words: list[str], rng: random.Random) -> list[str]:
        out = list(words)
        if len(out) < 2:
            return out
        for _ in range(self._n(self.config.alpha_rs, words)):
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
        return out

    def random_deletion(self, words: list[str], rng: random.Random) -> list[str]:
        if len(words) <= 1:
            return list(words)
        out = [w for w in words if rng.random() >= self.config.p_rd]
        return out or [rng.choice(words)]

    def span_mask(self, words: list[str], rng: random.Random) -> list[str]:
        if not words:
            return []
        span = min(len(words), self._n(self.config.alpha_mask, words))
        start = rng.randint(0, len(words) - span)
        return words[:start] + [self.config.mask_token] + words[start + span:]

    def sentence_shuffle(self, text: str, rng: random.Random) -> str:
        sentences = [s for s in _SENTENCE.split(text.strip()) if s]
        rng.shuffle(sentences)
        joiner = "" if HAN_CHAR.search(text) else " "
        return joiner.join(sentences)

    def apply(self, text: str, operation: str, rng: random.Random) -> str:
        """One operation on `text` with the random source `rng`."""
        if operation == "shuffle":
            return self.sentence_shuffle(text, rng)
        words, joiner = split_units(text)
        op = {"sr": self.synonym_replacement, "ri": self.random_insertion, "rs": self.random_swap,
              "rd": self.random_deletion, "mask": self.span_mask}[operation]
        return joiner.join(op(words, rng))

    def augment_text(self, text: str, key: int | str = 0) -> list[tuple[str, str]]:
        """`num_aug` (operation, new text) pairs for one text; `key` tells examples apart."""
        out = []
        ops = self.config.operations
        for k in range(self.config.num_aug):
            rng = random.Random(f"eda:{self.config.seed}:{key}:{k}")
            op = ops[k % len(ops)]
            out.append((op, self.apply(text, op, rng)))
        return out

    def augment_records(self, records: Iterable[Mapping[str, Any]], text_field: str = "text") -> Iterator[dict[str, Any]]:
        """Each record (if `keep_original`) and its augmented copies; every other field is copied."""
        for index, record in enumerate(records):
            text = record.get(text_field)
            if not isinstance(text, str):
                raise ConfigError(f"record {index} has no text field {text_field!r}")
            if self.config.keep_original:
                yield dict(record)
            for op, new in self.augment_text(text, index):
                yield {**record, text_field: new, "augmentation": op}
