"""Query rewriting before retrieval, each a prompt template + a `ChatModel` call.

* multi-query — several rephrasings of the question, retrieved in parallel and fused (RRF);
  the original question is kept first (and may be weighted higher) so its intent is not
  diluted.
* sub-query — split a complex question into simpler sub-questions, retrieve for each.
* HyDE (hypothetical document embeddings, Gao et al. 2022) — let the model write a plausible
  answer passage and retrieve with *its* embedding (answer-to-answer similarity).
* step-back (Zheng et al. 2023) — ask a more general, higher-level question; retrieve for
  both it and the original.
* rewrite — one cleaner search query.

Every function returns the list of queries to retrieve with (the original included where
the technique keeps it). The templates are module constants so users can swap them.
"""

from __future__ import annotations

from typing import Any

from lmkit.rag.llm import complete, lines_of

MULTI_QUERY_PROMPT = (
    "You help a search engine. Write {n} different rephrasings of the user's question that could retrieve "
    "relevant documents. Keep the question's language. One per line, no numbering.\n\nQuestion: {query}"
)
SUB_QUERY_PROMPT = (
    "Break the question into at most {n} simpler sub-questions that together answer it. Keep the question's "
    "language. One per line, no numbering.\n\nQuestion: {query}"
)
HYDE_PROMPT = (
    "Write a short passage (3-5 sentences) that answers the question, as it might appear in a reference text. "
    "Keep the question's language.\n\nQuestion: {query}\n\nPassage:"
)
STEP_BACK_PROMPT = (
    "Given a specific question, write one more general 'step-back' question about the underlying concept or "
    "principle needed to answer it. Keep the question's language. Reply with the question only.\n\n"
    "Question: {query}\nStep-back question:"
)
REWRITE_PROMPT = (
    "Rewrite the question as one concise search query with the key terms. Keep its language. Reply with the "
    "query only.\n\nQuestion: {query}\nQuery:"
)


def multi_query(model: Any, query: str, n: int = 3, prompt: str = MULTI_QUERY_PROMPT) -> list[str]:
    variants = [q for q in lines_of(complete(model, prompt.format(n=n, query=query)), n) if q != query]
    return [query, *variants]


def sub_queries(model: Any, query: str, n: int = 3, prompt: str = SUB_QUERY_PROMPT) -> list[str]:
    subs = lines_of(complete(model, prompt.format(n=n, query=query)), n)
    return subs or [query]


def hyde(model: Any, query: str, prompt: str = HYDE_PROMPT, max_tokens: int = 256) -> str:
    """The hypothetical answer passage (embed this instead of, or with, the query)."""
    return complete(model, prompt.format(query=query), max_tokens=max_tokens) or query


def step_back(model: Any, query: str, prompt: str = STEP_BACK_PROMPT) -> list[str]:
    general = (lines_of(complete(model, prompt.format(query=query)), 1) or [""])[0]
    return [query, general] if general and general != query else [query]


def rewrite(model: Any, query: str, prompt: str = REWRITE_PROMPT) -> list[str]:
    q = (lines_of(complete(model, prompt.format(query=query)), 1) or [""])[0]
    return [q or query]


STRATEGIES = ("none", "multi-query", "sub-query", "hyde", "step-back", "rewrite")
