"""`RagIndex`: chunks + a vector store + BM25 + the embedder, on disk in one folder.

    index/
      index.json    config: store kind (embedded | pgvector, dsn, collection), embedder
                    (model dir + identity), splitter settings
      bm25.json     term counts per chunk (the lexical index)
      store/        the EmbeddedStore (for store=embedded)

`retrieve(query, k, mode)` with mode ``bm25`` | ``dense`` | ``hybrid`` (RRF over both, k=60);
optional query rewriting (`query_rewrite` strategies, needing a ChatModel; the variants'
rankings are fused), and an optional reranker applied to the fused candidates. Opening an
index with an embedder other than the one it was built with is refused
(`EmbedderMismatchError`). The DSN is stored without its password when ``--dsn`` had one;
pass the DSN again (or set LMKIT_PG_DSN) to open such an index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from lmkit.atomic import atomic_write_text
from lmkit.checksums import write_checksums
from lmkit.errors import ConfigError
from lmkit.rag.bm25 import BM25
from lmkit.rag.document import Document
from lmkit.rag.embedder import check_identity, EmbedderIdentity
from lmkit.rag.fusion import reciprocal_rank_fusion
from lmkit.rag.store import Hit, VectorStore, matches

CONFIG = "index.json"


def chunk_id(doc: Document, n: int) -> str:
    m = doc.metadata
    parts = [str(m.get("source", "doc"))]
    if "page" in m:
        parts.append(f"p{m['page']}")
    if "line" in m:
        parts.append(f"l{m['line']}")
    parts.append(str(m.get("start_index", n)))
    return ":".join(parts)


class RagIndex:
    def __init__(self, path: Path, config: dict, store: VectorStore, bm25: BM25, embedder: Any) -> None:
        self.path, self.config, self.store, self.bm25, self.embedder = path, config, store, bm25, embedder

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, embedder: Any, store: str = "embedded", dsn: str | None = None,
               collection: str | None = None, ann: str | None = None, model_dir: str | None = None,
               splitter: dict | None = None) -> "RagIndex":
        path = Path(path)
        if (path / CONFIG).exists():
            raise ConfigError(f"{path} already holds an index; choose another -o or delete it first")
        ident = embedder.identity
        if store == "embedded":
            from lmkit.rag.store_embedded import EmbeddedStore

            vs: VectorStore = EmbeddedStore(ident, path / "store", ann=ann)
            store_cfg: dict = {"kind": "embedded"}
        elif store == "pgvector":
            from lmkit.rag.store_pgvector import PgVectorStore, redact

            if not dsn:
                raise ConfigError("--store pgvector needs --dsn postgresql://user:pass@host:port/db")
            collection = collection or "lmkit_" + "".join(c if c.isalnum() else "_" for c in path.name.lower())[:50]
            vs = PgVectorStore(dsn, collection, identity=ident)
            store_cfg = {"kind": "pgvector", "dsn": redact(dsn), "collection": collection}
        else:
            raise ConfigError(f"store={store!r}: choose 'embedded' or 'pgvector'")
        config = {"format": "lmkit.rag.index", "version": 1, "store": store_cfg,
                  "embedder": {"model_dir": model_dir, "identity": ident.to_dict()}, "splitter": splitter or {}}
        return cls(path, config, vs, BM25(), embedder)

    def add_documents(self, chunks: Sequence[Document], ids: Sequence[str] | None = None) -> list[str]:
        ids = list(ids) if ids is not None else [chunk_id(c, n) for n, c in enumerate(chunks)]
        seen: dict[str, int] = {}
        for n, i in enumerate(ids):  # make ids unique within the batch
            if i in seen:
                seen[i] += 1
                ids[n] = f"{i}#{seen[i]}"
            else:
                seen[i] = 0
        texts = [c.text for c in chunks]
        vectors = self.embedder.embed_documents(texts)
        self.store.add(ids, vectors, texts, [c.metadata for c in chunks], identity=self.embedder.identity)
        self.bm25.add(ids, texts)
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        self.store.delete(ids)
        self.bm25.delete(ids)

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.store.persist()
        atomic_write_text(self.path / "bm25.json", self.bm25.dumps())
        atomic_write_text(self.path / CONFIG, json.dumps(self.config, ensure_ascii=False, indent=1))
        write_checksums(self.path)

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any = None, dsn: str | None = None) -> "RagIndex":
        path = Path(path)
        f = path / CONFIG
        if not f.is_file():
            raise ConfigError(f"{path}: not an lmkit RAG index (no {CONFIG}); build one with `lmkit rag index`")
        try:
            config = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{f}: corrupt index config ({exc})") from None
        ident = EmbedderIdentity.from_dict(config["embedder"]["identity"])
        if embedder is None:
            from lmkit.rag.embedder import EncoderEmbedder

            embedder = EncoderEmbedder(config["embedder"].get("model_dir"))
        check_identity(ident, embedder.identity)
        sc = config["store"]
        if sc["kind"] == "embedded":
            from lmkit.rag.store_embedded import EmbeddedStore

            store: VectorStore = EmbeddedStore.load(path / "store")
        else:
            from lmkit.rag.store_pgvector import PgVectorStore

            dsn = dsn or os.environ.get("LMKIT_PG_DSN") or sc["dsn"]
            if "***" in dsn:
                raise ConfigError(f"{path} uses PostgreSQL at {sc['dsn']} (password not stored): pass --dsn with "
                                  "the password, or set LMKIT_PG_DSN")
            store = PgVectorStore(dsn, sc["collection"], identity=ident)
        check_identity(store.identity, embedder.identity)
        bm = BM25.from_dict(json.loads((path / "bm25.json").read_text(encoding="utf-8")))
        if store.count() != len(bm.ids):  # a save interrupted between the store and bm25.json
            ids = bm.ids if len(bm.ids) > store.count() else None
            hits = store.get(ids) if ids is not None else store.get(getattr(store, "_ids", bm.ids))
            bm = BM25(cjk_bigrams=bm.cjk_bigrams)
            bm.add([h.id for h in hits], [h.text for h in hits])
        return cls(path, config, store, bm, embedder)

    # ---- retrieval -------------------------------------------------------------------------
    def _texts(self, ids: Sequence[str], scores: dict[str, float]) -> list[Hit]:
        hits = self.store.get(list(ids))
        for h in hits:
            h.score = scores[h.id]
        return hits

    def search_bm25(self, query: str, k: int = 10, filter: dict | None = None) -> list[Hit]:
        fetch = k if not filter else max(5 * k, 100)
        ranked = self.bm25.search(query, fetch)
        hits = self._texts([i for i, _ in ranked], dict(ranked))
        return [h for h in hits if matches(h.metadata, filter)][:k]

    def search_dense(self, query: str, k: int = 10, filter: dict | None = None, text_to_embed: str | None = None) -> list[Hit]:
        vec = self.embedder.embed_query(text_to_embed or query)
        return self.store.search(vec, k, filter, identity=self.embedder.identity)

    def retrieve(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
                 candidates: int = 20, rewrite: str = "none", chat_model: Any = None, reranker: Any = None,
                 rrf_k: int = 60) -> list[Hit]:
        if mode not in ("bm25", "dense", "hybrid"):
            raise ConfigError(f"mode={mode!r}: choose bm25, dense or hybrid")
        queries, hyde_text = [query], None
        if rewrite != "none":
            if chat_model is None:
                raise ConfigError(f"query rewriting {rewrite!r} needs a chat model (--base-url/--model)")
            from lmkit.rag import query_rewrite as qr

            if rewrite == "multi-query":
                queries = qr.multi_query(chat_model, query)
            elif rewrite == "sub-query":
                queries = [query, *qr.sub_queries(chat_model, query)]
            elif rewrite == "step-back":
                queries = qr.step_back(chat_model, query)
            elif rewrite == "rewrite":
                queries = qr.rewrite(chat_model, query)
            elif rewrite == "hyde":
                hyde_text = qr.hyde(chat_model, query)
            else:
                raise ConfigError(f"rewrite={rewrite!r}: choose one of {qr.STRATEGIES}")
        n = max(k, candidates)
        rankings: list[list[Hit]] = []
        for q in queries:
            if mode in ("bm25", "hybrid"):
                rankings.append(self.search_bm25(q, n, filter))
            if mode in ("dense", "hybrid"):
                rankings.append(self.search_dense(q, n, filter, text_to_embed=hyde_text if q == query else None))
        if len(rankings) == 1:
            hits = rankings[0]
        else:
            by_id = {h.id: h for r in rankings for h in r}
            fused = reciprocal_rank_fusion([[h.id for h in r] for r in rankings], k=rrf_k)
            hits = []
            for i, s in fused[:n]:
                h = by_id[i]
                hits.append(Hit(h.id, s, h.text, h.metadata))
        if reranker is not None:
            hits = reranker.rerank(query, hits, top_n=k)
        return hits[:k]
