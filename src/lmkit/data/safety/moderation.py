"""Moderation: rules and the trained classifier together decide which categories a text hits.

A category is flagged when a rule matches (rules.py) or, for the categories the classifier
knows, when its probability reaches `threshold` (classifier.py). PII (e-mail, phone, ID and
card numbers) is found by the PII masker's regexes (data/filters/pii.py). The result has
the shape of OpenAI's moderation API: `flagged`, `categories` (bools), `category_scores`,
plus what matched.

`ModerationConfig` says which categories count, on which side (the prompt, the output, or
both) and how strict the classifier is; it is a dataclass that reads and writes JSON
(`lmkit serve --moderation-config FILE`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.data.filters.pii import PIIMasker
from lmkit.data.safety.classifier import SAFE, default_classifier
from lmkit.data.safety.rules import CATEGORIES, RuleSet
from lmkit.errors import ConfigError
from lmkit.jsonl import read_json_object


@dataclass
class ModerationConfig:
    """What moderation checks.

    categories: those that are flagged (others are still scored, never flagged).
    check_input / check_output: moderate prompts / generated text.
    classifier: use the trained classifier besides the rules; threshold: its probability
    needed to flag. rules_file: a JSON file of extra rules (rules.py); replace_rules: the
    file replaces the defaults instead of extending them. stream_window: characters of a
    streamed reply re-checked at each step (the tail where a new match can appear).
    """

    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    check_input: bool = True
    check_output: bool = True
    classifier: bool = True
    threshold: float = 0.9
    rules_file: str | None = None
    replace_rules: bool = False
    stream_window: int = 400

    def __post_init__(self) -> None:
        if isinstance(self.categories, str):
            self.categories = [c.strip() for c in self.categories.split(",") if c.strip()]
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ConfigError(f"moderation threshold must be in (0, 1], got {self.threshold!r}")
        if not isinstance(self.stream_window, int) or self.stream_window < 16:
            raise ConfigError(f"moderation stream_window must be an integer >= 16, got {self.stream_window!r}")
        self.threshold = float(self.threshold)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModerationConfig":
        data = read_json_object(path, "the moderation config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown moderation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        if data.get("rules_file") and not Path(data["rules_file"]).is_absolute():
            data["rules_file"] = str(Path(path).parent / data["rules_file"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModerationResult:
    """One verdict: flagged categories, a score per category, and what the rules matched."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    matches: dict[str, list[str]] = field(default_factory=dict)

    @property
    def flagged_categories(self) -> list[str]:
        return [c for c, hit in self.categories.items() if hit]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Moderator:
    """Checks text against `config`: `check(text) -> ModerationResult`."""

    def __init__(self, config: ModerationConfig | None = None, rules: RuleSet | None = None, classifier=None) -> None:
        self.config = config or ModerationConfig()
        if rules is None:
            rules = RuleSet.from_file(self.config.rules_file, extend=not self.config.replace_rules) \
                if self.config.rules_file else RuleSet()
        self.rules = rules
        self.classifier = classifier if classifier is not None else (default_classifier() if self.config.classifier
                                                                     else None)
        known = set(self.rules.categories) | set(CATEGORIES)
        unknown = sorted(set(self.config.categories) - known)
        if unknown:
            raise ConfigError(f"unknown moderation categories {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def check(self, text: str) -> ModerationResult:
        matches = self.rules.match(text)
        if "pii" in self.config.categories:
            masker = PIIMasker()
            masker.apply(text)
            pii = [k for k, n in masker.counts.items() if n]
            if pii:
                matches["pii"] = matches.get("pii", []) + pii
        proba = self.classifier.predict_proba(text) if self.classifier is not None else {}
        names = list(dict.fromkeys([*CATEGORIES, *self.rules.categories]))
        scores = {c: 1.0 if c in matches else float(proba.get(c, 0.0)) for c in names}
        hits = {c: c in self.config.categories and (c in matches or (c in proba and c != SAFE
                                                                     and proba[c] >= self.config.threshold))
                for c in names}
        return ModerationResult(any(hits.values()), hits, scores, matches)


def precision_recall(moderator: Moderator, rows: list[dict], categories=CATEGORIES) -> dict[str, tuple[float, float, int]]:
    """category -> (precision, recall, support) of `moderator` on labelled rows ({"text", "labels"})."""
    preds = [set(moderator.check(r["text"]).flagged_categories) for r in rows]
    out = {}
    for c in categories:
        tp = sum(c in p and c in r["labels"] for p, r in zip(preds, rows))
        fp = sum(c in p and c not in r["labels"] for p, r in zip(preds, rows))
        fn = sum(c not in p and c in r["labels"] for p, r in zip(preds, rows))
        out[c] = (tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0, tp + fn)
    return out
