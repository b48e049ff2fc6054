"""Evaluate retrieval on a QA set: each record names its gold (section or chunk ids).

A record is {"question": ..., "gold": [{"source": FILE NAME, "section": "H1 > H2 ..."}, ...]}
(any listed section answers it — the notes repeat topics) or {"question": ..., "ids": [...]}.
The relevant chunks of a record are all chunks of the index in a gold section, so recall@k
and nDCG@k are measured against every relevant chunk, not only the retrieved ones.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from lmkit.rag import metrics as M


def gold_ids(record: dict, chunks: dict[str, dict]) -> set[str]:
    """All chunk ids (of `chunks`: id -> metadata) that the record's gold points at."""
    if record.get("ids"):
        return set(record["ids"])
    golds = record.get("gold") or [{"source": record.get("source"), "section": record.get("section")}]
    out = set()
    for cid, m in chunks.items():
        for g in golds:
            if g.get("section") and m.get("section") != g["section"]:
                continue
            if g.get("source") and os.path.basename(str(m.get("source", ""))) != g["source"]:
                continue
            out.add(cid)
    return out


def evaluate_retrieval(retrieve: Callable[[str], Sequence[str]], records: Sequence[dict],
                       chunks: dict[str, dict], k: int = 5) -> dict[str, float]:
    """retrieve(question) -> ranked chunk ids. Returns mean hit@1, hit@k, MRR, nDCG@k,
    recall@k, context precision@k over the records."""
    rows: dict[str, list[float]] = {"hit@1": [], f"hit@{k}": [], "mrr": [], f"ndcg@{k}": [], f"recall@{k}": [],
                                    f"context_precision@{k}": []}
    for r in records:
        ids = list(retrieve(r["question"]))
        rel = gold_ids(r, chunks)
        rows["hit@1"].append(M.hit_at_k(ids, rel, 1))
        rows[f"hit@{k}"].append(M.hit_at_k(ids, rel, k))
        rows["mrr"].append(M.reciprocal_rank(ids, rel))
        rows[f"ndcg@{k}"].append(M.ndcg_at_k(ids, rel, k))
        rows[f"recall@{k}"].append(M.recall_at_k(ids, rel, k))
        rows[f"context_precision@{k}"].append(M.context_precision(ids, rel, k))
    return {name: M.mean(v) for name, v in rows.items()}


def index_chunks(index: Any) -> dict[str, dict]:
    """id -> metadata of every chunk of a RagIndex."""
    return {h.id: h.metadata for h in index.store.get(index.bm25.ids)}
