"""Union-find (disjoint sets) over document ids: near-duplicate pairs -> clusters.

The parent array is numpy, and edges are merged in bulk (`union_edges`): each round finds
the roots of both ends of every edge by pointer jumping, then hooks every larger root under
the smallest root it is joined to (``np.minimum.at``); rounds repeat until each edge's ends
share a root. A root is always the smallest id of its set, so "keep the root" keeps the first
occurrence of every cluster. Millions of edges merge in a few numpy passes instead of a
Python loop per edge.
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets of the ids ``0 .. n-1``; each set is named by its smallest id."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        """The root (smallest id) of the set holding `x`, halving the path on the way."""
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return int(x)

    def union(self, a: int, b: int) -> None:
        """Join the sets of `a` and `b` (the larger root goes under the smaller)."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def find_many(self, x: np.ndarray) -> np.ndarray:
        """Roots of many ids at once (pointer jumping; parents always point to smaller ids)."""
        r = self.parent[x]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                return r
            r = up

    def union_edges(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the sets of ``a[i]`` and ``b[i]`` for every i."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while len(a):
            ra, rb = self.find_many(a), self.find_many(b)
            differ = ra != rb
            ra, rb = ra[differ], rb[differ]
            if not len(ra):
                break
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))
            a, b = ra, rb
        self.compress()

    def compress(self) -> None:
        """Point every id straight at its root."""
        parent = self.parent
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                return
            parent = up
            self.parent = parent

    def roots(self) -> np.ndarray:
        """The root of every id (after `compress`, the parent array itself)."""
        self.compress()
        return self.parent.copy()

    def cluster_sizes(self) -> np.ndarray:
        """Size of every set with more than one member, largest first."""
        counts = np.bincount(self.roots(), minlength=len(self.parent))
        sizes = counts[counts > 1]
        return np.sort(sizes)[::-1]
