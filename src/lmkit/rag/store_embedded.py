"""`EmbeddedStore`: the default vector store — a folder, numpy in memory, nothing to install.

Search is exact (one matrix-vector product over L2-normalised float32 rows, then a partial
sort), so results are the true top-k. For large collections an optional HNSW graph from
faiss-cpu (`build_ann`, or ``ann="hnsw"`` with at least ``ann_min_size`` rows) answers
instead — approximate, much faster; vectors added later go into the graph incrementally,
and a delete or overwrite marks it stale so it is rebuilt on the next search. Metadata
filters are applied exactly (with the graph: over-fetch, filter, and fall back to exact
search if too few survive).

On disk (``persist``) a folder holds:
    store.json             ids, texts, metadata, embedder identity, names of the files below
    vectors-<gen>.npy      float32 [n, dim] (loaded with allow_pickle=False)
    ann-<gen>.faiss        the HNSW graph, if built
Each persist writes new generation files first and then replaces store.json atomically, so
a crash leaves either the old or the new store, never a mix; old generations are removed
afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from lmkit.atomic import atomic_path, atomic_write_text
from lmkit.rag.embedder import EmbedderIdentity
from lmkit.rag.store import Hit, StoreError, VectorStore, matches, normalize_rows

MANIFEST = "store.json"


class EmbeddedStore(VectorStore):
    def __init__(self, identity: EmbedderIdentity, path: str | os.PathLike | None = None, ann: str | None = None,
                 ann_min_size: int = 20000, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
        if ann not in (None, "hnsw"):
            raise StoreError(f"ann={ann!r}: use None (exact) or 'hnsw'")
        self.identity = identity
        self.path = Path(path) if path is not None else None
        self.ann, self.ann_min_size = ann, ann_min_size
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self._vectors = np.zeros((0, identity.dim), dtype=np.float32)
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._meta: list[dict] = []
        self._row: dict[str, int] = {}
        self._index = None  # faiss index over rows [0, n)
        self._gen = 0

    # ---- writing ------------------------------------------------------------------------
    def add(self, ids, vectors, texts, metadata=None, identity=None) -> None:
        ids = [str(i) for i in ids]
        vec = normalize_rows(vectors) if len(ids) else np.zeros((0, self.identity.dim), np.float32)
        self._check(vec, identity)
        self._check_lengths(ids, vec, texts, metadata)
        metadata = [dict(m or {}) for m in (metadata or [{}] * len(ids))]
        for m in metadata:
            try:
                json.dumps(m)
            except TypeError as exc:
                raise StoreError(f"metadata must be JSON-serialisable: {exc}") from None
        existing = [i for i in ids if i in self._row]
        if existing:
            self.delete(existing)
        start = len(self._ids)
        self._vectors = np.concatenate([self._vectors, vec]) if len(self._ids) else vec.copy()
        self._ids += ids
        self._texts += [str(t) for t in texts]
        self._meta += metadata
        for k, i in enumerate(ids):
            self._row[i] = start + k
        if self._index is not None:
            self._index.add(vec)

    def delete(self, ids: Sequence[str]) -> None:
        rows = sorted({self._row[str(i)] for i in ids if str(i) in self._row})
        if not rows:
            return
        keep = np.ones(len(self._ids), dtype=bool)
        keep[rows] = False
        self._vectors = self._vectors[keep]
        self._ids = [x for x, k in zip(self._ids, keep) if k]
        self._texts = [x for x, k in zip(self._texts, keep) if k]
        self._meta = [x for x, k in zip(self._meta, keep) if k]
        self._row = {i: r for r, i in enumerate(self._ids)}
        self._index = None if self._index is None else "stale"

    # ---- ANN ------------------------------------------------------------------------------
    def build_ann(self) -> None:
        """Build the faiss HNSW graph over all rows (inner product = cosine on unit vectors)."""
        from lmkit.errors import require

        faiss = require("faiss", "rag")
        index = faiss.IndexHNSWFlat(self.identity.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        if len(self._ids):
            index.add(self._vectors)
        self._index = index

    def _ann_ready(self) -> bool:
        if self.ann != "hnsw" or len(self._ids) < self.ann_min_size:
            return self._index is not None and self._index != "stale"
        if self._index is None or self._index == "stale":
            self.build_ann()
        return True

    # ---- reading ------------------------------------------------------------------------
    def _hit(self, r: int, score: float) -> Hit:
        return Hit(self._ids[r], float(score), self._texts[r], dict(self._meta[r]))

    def search_exact(self, vector, k: int = 5, filter: dict | None = None) -> list[Hit]:
        q = normalize_rows(vector)[0]
        if not self._ids or k <= 0:
            return []
        scores = self._vectors @ q
        if filter:
            allowed = np.array([matches(m, filter) for m in self._meta], dtype=bool)
            scores = np.where(allowed, scores, -np.inf)
            k = min(k, int(allowed.sum()))
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = sorted(top.tolist(), key=lambda r: (-scores[r], self._ids[r]))
        return [self._hit(r, scores[r]) for r in top]

    def search(self, vector, k: int = 5, filter: dict | None = None, identity=None) -> list[Hit]:
        q = normalize_rows(vector)
        self._check(q, identity)
        if not self._ann_ready():
            return self.search_exact(q, k, filter)
        fetch = k if not filter else min(len(self._ids), max(4 * k, 100))
        self._index.hnsw.efSearch = max(self.ef_search, fetch)
        scores, rows = self._index.search(q, fetch)
        hits = [self._hit(int(r), s) for s, r in zip(scores[0], rows[0])
                if r >= 0 and matches(self._meta[int(r)], filter)]
        if filter and len(hits) < k:
            return self.search_exact(q, k, filter)
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits[:k]

    def get(self, ids: Sequence[str]) -> list[Hit]:
        return [self._hit(self._row[str(i)], 1.0) for i in ids if str(i) in self._row]

    def count(self) -> int:
        return len(self._ids)

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray | None:
        """The stored (unit) vectors of `ids`, or None if any id is unknown."""
        rows = [self._row.get(str(i)) for i in ids]
        return None if any(r is None for r in rows) else self._vectors[rows]

    def vectors(self) -> np.ndarray:
        return self._vectors

    # ---- disk ----------------------------------------------------------------------------
    def persist(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise StoreError("persist: this store has no path; pass one")
        target.mkdir(parents=True, exist_ok=True)
        old = _read_manifest(target) if (target / MANIFEST).is_file() else None
        gen = max(self._gen, int(old["generation"]) if old else 0) + 1
        vec_name = f"vectors-{gen}.npy"
        with atomic_path(target / vec_name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self._vectors, allow_pickle=False)
        ann_name = None
        if self._index is not None and self._index != "stale":
            import faiss

            ann_name = f"ann-{gen}.faiss"
            with atomic_path(target / ann_name) as tmp:
                faiss.write_index(self._index, str(tmp))
        manifest = {
            "format": "lmkit.rag.embedded", "version": 1, "generation": gen, "identity": self.identity.to_dict(),
            "vectors": vec_name, "ann": ann_name, "ann_config": {"ann": self.ann, "ann_min_size": self.ann_min_size,
                                                                 "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search},
            "ids": self._ids, "texts": self._texts, "metadata": self._meta,
        }
        atomic_write_text(target / MANIFEST, json.dumps(manifest, ensure_ascii=False))
        for f in list(target.glob("vectors-*.npy")) + list(target.glob("ann-*.faiss")):
            if f.name not in (vec_name, ann_name):
                f.unlink(missing_ok=True)
        self._gen, self.path = gen, target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddedStore":
        path = Path(path)
        m = _read_manifest(path)
        cfg = m.get("ann_config") or {}
        store = cls(EmbedderIdentity.from_dict(m["identity"]), path, **cfg)
        try:
            vec = np.load(path / m["vectors"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path / m['vectors']}: cannot read the vectors ({exc}); the store is corrupt") from None
        n = len(m["ids"])
        if vec.shape != (n, store.identity.dim) or len(m["texts"]) != n or len(m["metadata"]) != n:
            raise StoreError(f"{path}: store.json lists {n} records but the vectors have shape {vec.shape}")
        store._vectors = vec.astype(np.float32, copy=False)
        store._ids, store._texts, store._meta = list(m["ids"]), list(m["texts"]), list(m["metadata"])
        store._row = {i: r for r, i in enumerate(store._ids)}
        store._gen = int(m["generation"])
        if m.get("ann"):
            import faiss

            store._index = faiss.read_index(str(path / m["ann"]))
        return store


def _read_manifest(path: Path) -> dict:
    f = path / MANIFEST
    if not f.is_file():
        raise StoreError(f"{path}: not an lmkit embedded store (no {MANIFEST})")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{f}: corrupt store manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != "lmkit.rag.embedded":
        raise StoreError(f"{f}: not an lmkit embedded store manifest")
    return m
