"""lmkit.rag — retrieval-augmented generation: load, split, embed, store, retrieve, rerank, answer, evaluate.

One concept per module: loaders, split_recursive / split_markdown / split_tokens /
split_chinese, embedder, store (interface) / store_embedded / store_pgvector, lexical + bm25,
fusion (RRF), rerank, query_rewrite, answer, metrics, index (the folder that ties them).
See docs/rag.md.
"""

from lmkit.rag.document import Document

__all__ = ["Document"]
