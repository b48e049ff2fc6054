"""Hybrid retrieval by reciprocal-rank fusion (Cormack et al., 2009).

    RRF(d) = sum over rankings r that contain d of  weight_r / (k + rank_r(d)),  rank from 1

k = 60 damps the head of each list so that a document ranked well by several retrievers
beats one ranked first by a single retriever. Only ranks are used, so BM25 scores and
cosine similarities (different scales) need no calibration. Ties break by the first
appearance across the rankings (in order).
"""

from __future__ import annotations

from typing import Sequence


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = 60,
                           weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    if k < 0:
        raise ValueError(f"RRF k must be >= 0, got {k}")
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    score: dict[str, float] = {}
    first: dict[str, int] = {}
    order = 0
    for ranking, w in zip(rankings, weights):
        seen = set()
        for rank, doc in enumerate(ranking, start=1):
            if doc in seen:  # a list that repeats an id counts it once, at its best rank
                continue
            seen.add(doc)
            score[doc] = score.get(doc, 0.0) + w / (k + rank)
            if doc not in first:
                first[doc] = order
                order += 1
    return sorted(score.items(), key=lambda kv: (-kv[1], first[kv[0]]))
