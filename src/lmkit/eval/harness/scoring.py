"""Per-document metric values from the model's answers (lm-eval's `process_results`).

multiple_choice: pred = argmax ll_i; acc = [pred == gold]; acc_norm = [argmax ll_i / len(choice_i)
in characters == gold]; acc_bytes the same with UTF-8 bytes; exact_match = is_greedy[gold]. A
gold given as text is looked up among the choices; a list of golds counts any of them.
loglikelihood: perplexity keeps ll, acc = is_greedy. loglikelihood_rolling: (ll, words) with
words = len(re.split(r"\\s+", text)), (ll, bytes). generate_until: exact_match against the
target (the choice it indexes when the task has choices; any of a list of targets).
"""

from __future__ import annotations

import re
from typing import Any

from lmkit.eval.harness.metrics import MetricSpec, exact_match


def _argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _gold_index(gold: Any, choices: list) -> Any:
    if isinstance(gold, list):
        return [g if isinstance(g, int) and g < len(choices) else -100 for g in gold]
    if isinstance(gold, bool):
        gold = int(gold)
    if isinstance(gold, int):
        return gold if gold < len(choices) else -100
    if isinstance(gold, str):
        return choices.index(gold) if gold in choices else -100
    return -100


def score_multiple_choice(metrics: list[MetricSpec], choices: list, gold: Any,
                          results: list[tuple[float, bool]]) -> dict[str, float]:
    lls = [ll for ll, _ in results]
    greedy = [g for _, g in results]
    pred = _argmax(lls)
    pred_norm = _argmax([ll / float(len(c)) for ll, c in zip(lls, choices)])
    pred_bytes = _argmax([ll / float(len(str(c).encode("utf-8"))) for ll, c in zip(lls, choices)])
    g = _gold_index(gold, choices)
    many = isinstance(g, list)

    def hit(p: int) -> float:
        return 1.0 if (p in g if many else p == g) else 0.0

    if many:
        em = float(int(any(greedy[i] if i != -100 else 0 for i in g)))
    else:
        em = float(int(greedy[g])) if g != -100 else 0.0
    values = {"acc": hit(pred), "acc_norm": hit(pred_norm), "acc_bytes": hit(pred_bytes), "exact_match": em}
    return {m.name: values[m.name] for m in metrics}


def score_loglikelihood(metrics: list[MetricSpec], result: tuple[float, bool]) -> dict[str, Any]:
    ll, greedy = result
    values = {"perplexity": ll, "acc": int(greedy)}
    return {m.name: values[m.name] for m in metrics}


def score_rolling(metrics: list[MetricSpec], text: str, ll: float) -> dict[str, Any]:
    words = len(re.split(r"\s+", text))
    n_bytes = len(text.encode("utf-8"))
    values = {"word_perplexity": (ll, words), "byte_perplexity": (ll, n_bytes), "bits_per_byte": (ll, n_bytes)}
    return {m.name: values[m.name] for m in metrics}


def score_generation(metrics: list[MetricSpec], gold: Any, choices: list | None, result: Any) -> dict[str, float]:
    if choices is not None:
        gold = choices[gold]
    out = {}
    for m in metrics:
        if isinstance(gold, list):
            out[m.name] = 1.0 if any(exact_match(result, g, **m.kwargs) for g in gold) else 0.0
        else:
            if not isinstance(result, list) and type(gold) is not type(result):
                gold = type(result)(gold)
            out[m.name] = exact_match(result, gold, **m.kwargs)
    return out
