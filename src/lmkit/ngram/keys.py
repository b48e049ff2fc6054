"""n-grams as numpy keys: sorted arrays and binary search instead of dicts of tuples.

A k-gram of ids ``(w1, ..., wk)`` becomes one sortable scalar:

* packed int64 ``w1 << (k-1)b | ... | wk`` with ``b = bits(vocab_size - 1)``, when ``k*b <= 63``
  (e.g. a 65k vocabulary up to 3-grams, 1M words up to 3-grams, 4k words up to 5-grams);
* otherwise a fixed-width byte string of the big-endian uint32 ids (``S{4k}``).

Both encodings order keys exactly like the id tuples (lexicographically), so a sorted key
array is also sorted by context: all k-grams sharing a (k-1)-word prefix are contiguous. A
table of N k-grams costs N * 8 bytes (or 4k bytes) plus its values; lookups are
``np.searchsorted`` — O(log N), vectorised over many queries at once.
"""

from __future__ import annotations

import numpy as np


def id_bits(vocab_size: int) -> int:
    return max(1, int(vocab_size - 1).bit_length())


class GramCodec:
    """Encode (N, k) id matrices as 1-D sortable keys and back."""

    def __init__(self, vocab_size: int, order: int) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.bits = id_bits(vocab_size)
        self.packed = order * self.bits <= 63

    def encode(self, grams: np.ndarray) -> np.ndarray:
        grams = np.asarray(grams)
        if grams.ndim != 2 or grams.shape[1] != self.order:
            raise ValueError(f"expected an (N, {self.order}) id matrix, got shape {grams.shape}")
        if self.packed:
            key = np.zeros(len(grams), dtype=np.int64)
            for j in range(self.order):
                key <<= self.bits
                key |= grams[:, j].astype(np.int64)
            return key
        return np.ascontiguousarray(grams.astype(">u4")).view(f"S{4 * self.order}").ravel()

    def encode_columns(self, cols: list[np.ndarray]) -> np.ndarray:
        """Like encode, from k separate id columns (avoids building the matrix when packed)."""
        if self.packed:
            key = np.zeros(len(cols[0]), dtype=np.int64)
            for c in cols:
                key <<= self.bits
                key |= c.astype(np.int64)
            return key
        return self.encode(np.stack(cols, axis=1))

    def decode(self, keys: np.ndarray) -> np.ndarray:
        n = len(keys)
        if self.packed:
            out = np.empty((n, self.order), dtype=np.int32)
            mask = (1 << self.bits) - 1
            k = keys.copy()
            for j in range(self.order - 1, -1, -1):
                out[:, j] = k & mask
                k >>= self.bits
            return out
        return np.frombuffer(keys.tobytes(), dtype=">u4").reshape(n, self.order).astype(np.int32)


class GramTable:
    """Sorted unique k-grams of one order with a lookup."""

    def __init__(self, grams: np.ndarray, vocab_size: int, keys: np.ndarray | None = None) -> None:
        self.order = grams.shape[1]
        self.codec = GramCodec(vocab_size, self.order)
        self.grams = np.ascontiguousarray(grams, dtype=np.int32)
        self.keys = self.codec.encode(self.grams) if keys is None else keys
        if len(self.keys) > 1 and not np.all(self.keys[1:] > self.keys[:-1]):
            raise ValueError("GramTable needs sorted unique n-grams")

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, grams: np.ndarray) -> np.ndarray:
        """Row index of each query k-gram, -1 where absent."""
        if len(grams) == 0 or len(self.keys) == 0:
            return np.full(len(grams), -1, dtype=np.int64)
        q = self.codec.encode(np.asarray(grams))
        idx = np.searchsorted(self.keys, q)
        idx = np.minimum(idx, len(self.keys) - 1)
        return np.where(self.keys[idx] == q, idx, -1).astype(np.int64)

    def prefix_range(self, context) -> tuple[int, int]:
        """Rows [lo, hi) whose first k-1 ids equal `context`."""
        ctx = np.asarray(context, dtype=np.int64).reshape(1, -1)
        if self.codec.packed:
            lo = self.codec.encode(np.concatenate([ctx, [[0]]], axis=1))[0]
            hi = lo + (1 << self.codec.bits)
            return int(np.searchsorted(self.keys, lo, "left")), int(np.searchsorted(self.keys, hi, "left"))
        head = np.ascontiguousarray(ctx.astype(">u4")).tobytes()
        q = np.array([head + b"\x00" * 4, head + b"\xff" * 4], dtype=self.keys.dtype)
        return int(np.searchsorted(self.keys, q[0], "left")), int(np.searchsorted(self.keys, q[1], "right"))

    def context_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, group_of_row): rows sharing their first k-1 ids form one group."""
        n = len(self.grams)
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self.order == 1:
            return np.zeros(1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        pre = self.grams[:, :-1]
        change = np.any(pre[1:] != pre[:-1], axis=1)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        group = np.cumsum(np.concatenate([[False], change])).astype(np.int64)
        return starts, group
