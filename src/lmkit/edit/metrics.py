"""CounterFact's measures of an edit (Meng et al. 2022), on records of `facts.py`'s shape.

  efficacy      the rewrite prompt scores target_new above target_true           (reliability)
  paraphrase    the same, on the paraphrase prompts                               (generalisation)
  neighbourhood other subjects with the same relation still score target_true    (locality)
                above target_new (neighbours edited in the same batch are left out: their
                answer was changed on purpose)
  fluency       n-gram entropy of generations from the subject (ROME: 2/3 · H₂ + 4/3 · H₃, halved),
                which collapses when an edit makes the model repeat itself
A score is the mean log-probability per token of the target after the prompt.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lmkit.edit.prompt_tokens import score_targets


@dataclass
class EditScores:
    efficacy: float
    paraphrase: float
    neighbourhood: float
    fluency: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _targets(record: dict) -> tuple[str, str]:
    rw = record["requested_rewrite"]
    get = lambda t: t["str"] if isinstance(t, dict) else t  # noqa: E731
    return get(rw["target_new"]), get(rw["target_true"])


def _prefers_new(model, tokenizer, prompts: list[str], news: list[str], trues: list[str]) -> torch.Tensor:
    if not prompts:
        return torch.zeros(0, dtype=torch.bool)
    return score_targets(model, tokenizer, prompts, news) > score_targets(model, tokenizer, prompts, trues)


def _rate(model, tokenizer, records: list[dict], field: str) -> float:
    prompts, news, trues = [], [], []
    edited = [r["requested_rewrite"]["subject"] for r in records]
    for r in records:
        new, true = _targets(r)
        ps = [r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"])] if field == "rewrite" \
            else r.get(field, [])
        if field == "neighborhood_prompts":  # a neighbour that was edited itself has no true answer left
            ps = [p for p in ps if not any(s in p for s in edited)]
        prompts += ps
        news += [new] * len(ps)
        trues += [true] * len(ps)
    wins = _prefers_new(model, tokenizer, prompts, news, trues)
    if field == "neighborhood_prompts":
        wins = ~wins
    return float(wins.float().mean()) if len(wins) else float("nan")


def n_gram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency of one generation: weighted mean of the entropies (bits) of its word n-grams."""
    words = text.split()
    out = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        out.append(w * h)
    return sum(out) / len(out)


@torch.no_grad()
def fluency(model: nn.Module, tokenizer, records: list[dict], max_new_tokens: int = 40) -> float:
    """Mean n-gram entropy of greedy generations from each record's generation prompts."""
    from lmkit.infer.generate import generate_text

    prompts = [p for r in records for p in r.get("generation_prompts", [])]
    if not prompts:
        return float("nan")
    texts = generate_text(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False)
    return sum(n_gram_entropy(p + t) for p, t in zip(prompts, texts)) / len(texts)


@torch.no_grad()
def edit_scores(model: nn.Module, tokenizer, records: list[dict], with_fluency: bool = False) -> EditScores:
    """Efficacy, paraphrase and neighbourhood rates of `records` on `model` (after the edits)."""
    return EditScores(
        efficacy=_rate(model, tokenizer, records, "rewrite"),
        paraphrase=_rate(model, tokenizer, records, "paraphrase_prompts"),
        neighbourhood=_rate(model, tokenizer, records, "neighborhood_prompts"),
        fluency=fluency(model, tokenizer, records) if with_fluency else None,
    )
