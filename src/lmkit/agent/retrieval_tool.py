"""A tool that searches a document index, so an agent can decide when to retrieve.

Any retriever works: something with `retrieve(query, k)` (lmkit.rag's retrievers) or a plain
callable `(query, k) -> hits`. A hit may be an object with `text` and `metadata`/`source`
attributes or a dict with those keys; each is shown to the model numbered, with its source, so
the answer can cite it.
"""

from __future__ import annotations

from typing import Any, Callable

from lmkit.agent.tools import Tool
from lmkit.errors import ConfigError


def _field(hit: Any, name: str, default: Any = None) -> Any:
    if isinstance(hit, dict):
        return hit.get(name, default)
    return getattr(hit, name, default)


def format_hits(hits: list[Any], max_chars: int = 800) -> str:
    if not hits:
        return "No matching passages."
    lines = []
    for i, hit in enumerate(hits, 1):
        text = str(_field(hit, "text", "")).strip().replace("\n", " ")
        if len(text) > max_chars:
            text = text[:max_chars] + "…"
        meta = _field(hit, "metadata", {}) or {}
        source = _field(hit, "source") or meta.get("source") or meta.get("path") or ""
        lines.append(f"[{i}] ({source}) {text}" if source else f"[{i}] {text}")
    return "\n".join(lines)


def retrieval_tool(retriever: Any, *, k: int = 4, name: str = "search_documents",
                   description: str = "Search the document collection and return the most relevant passages, "
                                      "numbered, with their sources.",
                   max_chars: int = 800, timeout: float | None = 60.0) -> Tool:
    """Wrap a retriever as a tool taking one argument, `query`."""
    if k < 1:
        raise ConfigError(f"retrieval k must be >= 1, got {k}")
    search: Callable[[str, int], list[Any]]
    if hasattr(retriever, "retrieve"):
        search = lambda q, n: retriever.retrieve(q, k=n)  # noqa: E731
    elif callable(retriever):
        search = retriever
    else:
        raise ConfigError("retrieval_tool needs an object with retrieve(query, k) or a callable (query, k) -> hits")

    def search_documents(query: str) -> str:
        """Search the documents.

        Args:
            query: what to look for, in the documents' language
        """
        return format_hits(list(search(query, k)), max_chars=max_chars)

    return Tool.from_function(search_documents, name=name, description=description, timeout=timeout)
