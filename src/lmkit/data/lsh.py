"""Locality-sensitive hashing of MinHash signatures: bands of rows, documents that share a band.

A signature of ``b * r`` minima is cut into `b` bands of `r` rows. Two documents are
*candidates* when all `r` rows of at least one band are equal; for documents of Jaccard
similarity `s` that happens with probability ``P(s) = 1 - (1 - s^r)^b``, an S-shaped curve
that rises steeply around ``(1/b)^(1/r)``.

`optimal_param` picks (b, r) for a threshold the way datasketch and text-dedup do: among all
``b * r <= num_perm``, minimise ``w_fp * FP + w_fn * FN`` where FP is the area under P(s) left
of the threshold (pairs found that are not similar enough) and FN the area above P(s) right
of it (pairs missed). The integrals are computed by Gauss-Legendre quadrature, exact for
these polynomials up to degree 1023 (num_perm <= 1023), so no scipy is needed.

Buckets are found by sorting one 64-bit key per document and band (`band_keys`), so a band
over millions of documents costs one ``argsort``; `band_edges` turns each bucket into edges
for union-find (`lmkit.data.union_find`) and `candidate_pairs` lists all pairs (small inputs).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lmkit.data.shingles import fmix64
from lmkit.errors import ConfigError

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(512)


def s_curve(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """Probability that two documents of Jaccard similarity `s` share at least one band."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def _integral(f, lo: float, hi: float) -> np.ndarray:
    """Integral of `f` over [lo, hi] by Gauss-Legendre; `f` maps an (n, 1) grid to (n, k) values."""
    x = (hi - lo) / 2.0 * _NODES + (hi + lo) / 2.0
    return (hi - lo) / 2.0 * (_WEIGHTS[:, None] * f(x[:, None])).sum(axis=0)


def error_areas(threshold: float, bands: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive area, false-negative area) of each (bands, rows) pair for `threshold`."""
    bands, rows = np.asarray(bands, dtype=float), np.asarray(rows, dtype=float)
    fp = _integral(lambda s: 1.0 - (1.0 - s**rows) ** bands, 0.0, threshold)
    fn = _integral(lambda s: (1.0 - s**rows) ** bands, threshold, 1.0)
    return fp, fn


@lru_cache(maxsize=256)
def optimal_param(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + false negative areas of the S-curve."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if num_perm < 2:
        raise ConfigError(f"num_perm must be at least 2, got {num_perm}")
    if false_positive_weight < 0 or false_negative_weight < 0 or false_positive_weight + false_negative_weight == 0:
        raise ConfigError("the false positive and false negative weights must be >= 0 and not both 0")
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    fp, fn = error_areas(threshold, pairs[:, 0], pairs[:, 1])
    error = false_positive_weight * fp + false_negative_weight * fn
    best = int(np.argmin(error))  # first minimum in (b, r) order, as datasketch's strict `<` keeps it
    return int(pairs[best, 0]), int(pairs[best, 1])


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 key per document for band number `band` (rows ``band*rows`` .. ``+rows``)."""
    cols = signatures[:, band * rows : (band + 1) * rows]
    if cols.shape[1] != rows:
        raise ConfigError(f"band {band} of {rows} rows does not fit signatures of {signatures.shape[1]} values")
    key = np.zeros(len(signatures), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(rows):
            key = key * np.uint64(0x100000001B3) + cols[:, c].astype(np.uint64)
            if c % 2 == 1:  # keep mixing so rows far apart still reach every bit
                key = fmix64(key)
        return fmix64(key)


def bucket_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group id in sorted order): documents sorted by key, and which bucket each is in."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    new_group = np.empty(len(keys), dtype=bool)
    new_group[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_group[1:])
    return order, np.cumsum(new_group) - 1


def band_edges(keys: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges (first member of the bucket, other member) for every bucket of more than one document.

    `ids` names the documents (default 0..n-1); -1 ids (documents to leave out) must be filtered
    before. Linking each member to its bucket's first member keeps the edge count = members - 1.
    """
    order, group = bucket_groups(keys)
    if len(order) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    first = order[starts][group]  # first member (in sorted order) of each document's bucket
    member = order
    keep = first != member
    a, b = first[keep], member[keep]
    if ids is not None:
        a, b = ids[a], ids[b]
    return a.astype(np.int64), b.astype(np.int64)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, valid: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Every pair (i, j), i < j, that shares at least one band (all pairs of each bucket).

    Quadratic in the bucket size: meant for tests and small sets; deduplication uses `band_edges`.
    `valid` (bool per document) leaves out documents such as empty ones.
    """
    idx = np.arange(len(signatures)) if valid is None else np.flatnonzero(valid)
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        order, group = bucket_groups(band_keys(signatures[idx], band, rows))
        bounds = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo > 1:
                members = sorted(int(i) for i in idx[order[lo:hi]])
                pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return pairs
