"""The `VectorStore` interface shared by the embedded store and PostgreSQL + pgvector.

    add(ids, vectors, texts, metadata)   insert or replace (same id = overwrite)
    delete(ids)                          remove; unknown ids are ignored
    search(vector, k, filter) -> [Hit]   cosine similarity, best first; ties by id
    get(ids) -> [Hit]                    the stored records (score 1.0)
    persist() / load()                   make durable / reopen
    count()

Vectors are compared by cosine similarity (stores L2-normalise on the way in). A filter is a
dict of metadata field -> value (equality) or field -> list of values (membership); all
fields must match. Every store records the `EmbedderIdentity` it was built with and refuses
vectors from another (`check_identity`), and vectors of the wrong dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lmkit.errors import LmkitError
from lmkit.rag.embedder import EmbedderIdentity, check_identity


class StoreError(LmkitError):
    """A vector store is unreachable, corrupt or given bad input."""


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def matches(metadata: dict, flt: dict | None) -> bool:
    if not flt:
        return True
    for key, want in flt.items():
        have = metadata.get(key)
        if isinstance(want, (list, tuple, set, frozenset)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def normalize_rows(vectors) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


class VectorStore(ABC):
    identity: EmbedderIdentity

    def _check(self, vectors: np.ndarray, identity: EmbedderIdentity | None) -> None:
        check_identity(self.identity, identity)
        if vectors.shape[-1] != self.identity.dim:
            raise StoreError(f"vectors have dimension {vectors.shape[-1]}, this store holds {self.identity.dim}")

    @staticmethod
    def _check_lengths(ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], metadata) -> None:
        n = len(ids)
        if len(vectors) != n or len(texts) != n or (metadata is not None and len(metadata) != n):
            raise StoreError(f"add: {n} ids but {len(vectors)} vectors, {len(texts)} texts"
                             + ("" if metadata is None else f", {len(metadata)} metadata"))
        if len(set(ids)) != n:
            raise StoreError("add: ids must be unique within one call")

    @abstractmethod
    def add(self, ids: Sequence[str], vectors, texts: Sequence[str], metadata: Sequence[dict] | None = None,
            identity: EmbedderIdentity | None = None) -> None: ...

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def search(self, vector, k: int = 5, filter: dict | None = None,
               identity: EmbedderIdentity | None = None) -> list[Hit]: ...

    @abstractmethod
    def get(self, ids: Sequence[str]) -> list[Hit]: ...

    @abstractmethod
    def count(self) -> int: ...

    def persist(self) -> None:  # pragma: no cover - overridden where meaningful
        return None
