"""Metrics and their aggregations, as lm-eval defines them.

Per-document values: acc / acc_norm / exact_match are 0 or 1; perplexity keeps the
log-likelihood; word_perplexity / byte_perplexity / bits_per_byte keep (log-likelihood,
words or bytes). Aggregations over documents:

    mean                 sum(x) / n
    perplexity           exp(-mean(ll))
    weighted_perplexity  exp(-sum(ll) / sum(weights))
    bits_per_byte        -sum(ll) / sum(bytes) / ln 2

exact_match compares strings after removing each of `regexes_to_ignore`, then lowercasing
(`ignore_case`), then deleting string.punctuation (`ignore_punctuation`) and digits
(`ignore_numbers`).
"""

from __future__ import annotations

import math
import re
import string
from typing import Callable, Sequence

from lmkit.eval.harness.task_config import TaskConfigError


def mean(items: Sequence[float]) -> float:
    return sum(items) / len(items)


def weighted_mean(items: Sequence[tuple[float, float]]) -> float:
    a, b = zip(*items)
    return sum(a) / sum(b)


AGGREGATIONS: dict[str, Callable] = {
    "mean": mean,
    "median": lambda items: sorted(items)[len(items) // 2],
    "perplexity": lambda items: math.exp(-mean(items)),
    "weighted_perplexity": lambda items: math.exp(-weighted_mean(items)),
    "bits_per_byte": lambda items: -weighted_mean(items) / math.log(2),
}

# metric -> (default aggregation, higher is better, output types it applies to)
METRICS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "acc": ("mean", True, ("loglikelihood", "multiple_choice")),
    "acc_norm": ("mean", True, ("multiple_choice",)),
    "acc_bytes": ("mean", True, ("multiple_choice",)),
    "exact_match": ("mean", True, ("generate_until", "multiple_choice")),
    "perplexity": ("perplexity", False, ("loglikelihood",)),
    "word_perplexity": ("weighted_perplexity", False, ("loglikelihood_rolling",)),
    "byte_perplexity": ("weighted_perplexity", False, ("loglikelihood_rolling",)),
    "bits_per_byte": ("bits_per_byte", False, ("loglikelihood_rolling",)),
}


def exact_match(prediction: str, reference: str, regexes_to_ignore: Sequence[str] | None = None,
                ignore_case: bool = False, ignore_punctuation: bool = False, ignore_numbers: bool = False) -> float:
    p, r = str(prediction), str(reference)
    for rx in regexes_to_ignore or ():
        p, r = re.sub(rx, "", p), re.sub(rx, "", r)
    if ignore_case:
        p, r = p.lower(), r.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        p, r = p.translate(table), r.translate(table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        p, r = p.translate(table), r.translate(table)
    return float(p == r)


def sample_stderr(items: Sequence[float]) -> float | str:
    """Standard error of a mean (sample standard deviation / sqrt n); "N/A" for one item."""
    n = len(items)
    if n < 2:
        return "N/A"
    mu = mean(items)
    return math.sqrt(sum((x - mu) ** 2 for x in items) / (n - 1)) / math.sqrt(n)


class MetricSpec:
    """One entry of a task's metric_list, checked against the output type."""

    def __init__(self, entry: dict, output_type: str, where: str = "") -> None:
        name = entry["metric"]
        if name not in METRICS:
            raise TaskConfigError(f"{where}: metric {name!r} is not supported; known: {sorted(METRICS)}")
        default_agg, default_hib, types = METRICS[name]
        if output_type not in types:
            raise TaskConfigError(f"{where}: metric {name!r} does not apply to output_type {output_type}")
        self.name = name
        self.aggregation = entry.get("aggregation", default_agg)
        if self.aggregation not in AGGREGATIONS:
            raise TaskConfigError(f"{where}: aggregation {self.aggregation!r} is not one of {sorted(AGGREGATIONS)}")
        self.higher_is_better = bool(entry.get("higher_is_better", default_hib))
        self.kwargs = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better",
                                                                     "hf_evaluate")}
        allowed = ({"regexes_to_ignore", "ignore_case", "ignore_punctuation", "ignore_numbers"}
                   if name == "exact_match" else set())
        bad = set(self.kwargs) - allowed
        if bad:
            raise TaskConfigError(f"{where}: metric {name!r} does not take {sorted(bad)}")

    def aggregate(self, items: list) -> float:
        return float(AGGREGATIONS[self.aggregation](items))
