"""RAG metrics: retrieval ranking quality and LLM-judged answer quality.

Retrieval (``retrieved``: ids best first; ``relevant``: the gold ids; graded ``gains`` optional):
* hit rate@k   — 1 if any relevant id is in the top k (mean over queries = hit rate)
* MRR          — 1 / rank of the first relevant id (0 if none); mean = Mean Reciprocal Rank
* recall@k     — |relevant ∩ top k| / |relevant|
* nDCG@k       — DCG = sum gain_i / log2(i + 1) over ranks i = 1..k, divided by the DCG of
                 the ideal order (binary gains unless given); matches scikit-learn's ndcg_score
* context precision@k — mean over relevant positions i <= k of precision@i (RAGAS' definition,
                 rank-aware); context recall — share of the reference answer's sentences that
                 the retrieved context supports (token overlap ≥ threshold, no LLM needed).

Generation (LLM as judge, pluggable prompts, any `ChatModel`):
* faithfulness     — each claim (sentence) of the answer judged YES/NO "supported by the
                     context"; score = supported / claims (LlamaIndex/RAGAS style prompt)
* answer relevancy — the judge scores 0-2 whether the answer addresses the question
                     ("[RESULT] n", LlamaIndex's prompt), normalised to [0, 1]
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Sequence


def hit_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    rel = set(relevant)
    return float(any(r in rel for r in retrieved[:k]))


def reciprocal_rank(retrieved: Sequence[str], relevant: Iterable[str], k: int | None = None) -> float:
    rel = set(relevant)
    for i, r in enumerate(retrieved[:k] if k else retrieved, 1):
        if r in rel:
            return 1.0 / i
    return 0.0


def recall_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel & set(retrieved[:k])) / len(rel)


def ndcg_at_k(retrieved: Sequence[str], relevant: Iterable[str] | dict[str, float], k: int) -> float:
    gains = dict(relevant) if isinstance(relevant, dict) else {r: 1.0 for r in relevant}
    dcg = sum(gains.get(r, 0.0) / math.log2(i + 1) for i, r in enumerate(retrieved[:k], 1))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def context_precision(retrieved: Sequence[str], relevant: Iterable[str], k: int | None = None) -> float:
    rel = set(relevant)
    top = list(retrieved[:k] if k else retrieved)
    precisions, found = [], 0
    for i, r in enumerate(top, 1):
        if r in rel:
            found += 1
            precisions.append(found / i)
    return sum(precisions) / len(precisions) if precisions else 0.0


def context_recall(reference: str, contexts: Sequence[str], tokenizer: Callable[[str], list[str]] | None = None,
                   threshold: float = 0.6) -> float:
    """Share of the reference answer's sentences whose tokens are mostly (>= threshold) found in the context."""
    if tokenizer is None:
        from lmkit.rag.lexical import shared_tokenizer

        tokenizer = shared_tokenizer()
    ctx = set(tokenizer(" ".join(contexts)))
    sents = [s for s in re.split(r"[。！？!?；;\n.]+", reference) if tokenizer(s)]
    if not sents:
        return 0.0
    ok = 0
    for s in sents:
        toks = tokenizer(s)
        ok += sum(t in ctx for t in toks) / len(toks) >= threshold
    return ok / len(sents)


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


# ---- LLM-judged ---------------------------------------------------------------------------
FAITHFULNESS_PROMPT = (
    "Please tell if a given piece of information is supported by the context.\n"
    "You need to answer with either YES or NO.\n"
    "Answer YES if any of the context supports the information, even if most of the context is unrelated.\n\n"
    "Information: {claim}\nContext: {context}\nAnswer:"
)
ANSWER_RELEVANCY_PROMPT = (
    "Your task is to evaluate if the response is relevant to the query.\n"
    "Answer these questions step by step:\n"
    "1. Does the provided response match the subject matter of the user's query?\n"
    "2. Does the provided response attempt to address the focus or perspective on the subject matter taken on by "
    "the user's query?\n"
    "Each question above is worth 1 point. After your feedback give the final result strictly in this format: "
    "'[RESULT] followed by the integer total score'\n\nQuery:\n{query}\nResponse:\n{response}\nFeedback:"
)


def claims_of(answer: str) -> list[str]:
    text = re.sub(r"\[\d+(?:\s*[,，]\s*\d+)*\]", "", answer)
    return [s.strip() for s in re.split(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n+", text) if s and len(s.strip()) > 1]


def faithfulness(judge: Any, answer: str, contexts: Sequence[str], prompt: str = FAITHFULNESS_PROMPT) -> float:
    from lmkit.rag.llm import complete

    claims = claims_of(answer)
    if not claims:
        return 0.0
    context = "\n\n".join(contexts)
    yes = 0
    for c in claims:
        reply = complete(judge, prompt.format(claim=c, context=context), max_tokens=4).upper()
        yes += reply.startswith("YES") or (("YES" in reply) and ("NO" not in reply))
    return yes / len(claims)


def answer_relevancy(judge: Any, query: str, answer: str, prompt: str = ANSWER_RELEVANCY_PROMPT,
                     max_score: int = 2) -> float:
    from lmkit.rag.llm import complete

    reply = complete(judge, prompt.format(query=query, response=answer), max_tokens=256)
    m = re.search(r"\[RESULT\]\s*(\d+(?:\.\d+)?)", reply)
    if not m:
        nums = re.findall(r"\d+(?:\.\d+)?", reply)
        if not nums:
            return 0.0
        value = float(nums[-1])
    else:
        value = float(m.group(1))
    return max(0.0, min(1.0, value / max_score))
