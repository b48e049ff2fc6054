"""MinHash signatures: `num_perm` random permutations of the hash space, the minimum of each.

For two sets A and B, the chance that one permutation gives them the same minimum is their
Jaccard similarity |A∩B| / |A∪B|; a signature of `num_perm` minima estimates it, and LSH
(`lmkit.data.lsh`) finds pairs with similar signatures without comparing every pair.

The permutations are hash families, applied to every shingle hash of a whole batch of
documents in one numpy expression (``[num_perm, shingles]``), then reduced per document with
``np.minimum.reduceat``: no Python loop per document or per shingle. Two schemes, both
bit-compatible with `datasketch` given the same input hashes and seed:

* ``"affine32"`` (the default; datasketch >= 2.0's default): the 64-bit shingle hash is
  folded to 32 bits, mixed once by the MurmurHash3 finalizer, then ``a*h + b mod 2^32`` with
  odd ``a``: a bijection of the 32-bit space per permutation, computed in ``uint32``.
* ``"mersenne"`` (datasketch's "legacy", text-dedup's): ``(a*h + b) mod (2^61 - 1)`` in
  ``uint64`` arithmetic (the product wraps at 2^64, as in datasketch), truncated to 32 bits.
  The modulo uses the Mersenne identity ``x mod p = (x & p) + (x >> 61)`` (one conditional
  subtraction) instead of numpy's slow 64-bit division.

Signatures are ``uint32 [documents, num_perm]``; an empty document gets all ``2^32 - 1``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmkit.errors import ConfigError

SCHEMES = ("affine32", "mersenne")
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint32((1 << 32) - 1)
EMPTY = int(MAX_HASH)
#: elements per block of the [num_perm, shingles] product (bounds memory: 4M x 8 B = 32 MB)
BLOCK_ELEMENTS = 1 << 22


def fmix32(x: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer (datasketch's pre-mix for the affine schemes)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters of the permutations, drawn exactly as datasketch draws them."""
    gen = np.random.RandomState(seed)
    if scheme == "mersenne":
        pairs = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                          for _ in range(num_perm)], dtype=np.uint64).T
        return pairs[0].copy(), pairs[1].copy()
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def mod_mersenne(x: np.ndarray) -> np.ndarray:
    """``x mod (2^61 - 1)`` for uint64 `x`, without a division (in place on `x`)."""
    low = x & MERSENNE_PRIME
    x >>= np.uint64(61)
    x += low
    x -= MERSENNE_PRIME * (x >= MERSENNE_PRIME)
    return x


class MinHasher:
    """Compute MinHash signatures of many documents at once from their shingle hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 1, scheme: str = "affine32") -> None:
        if scheme not in SCHEMES:
            raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if not 1 <= num_perm <= 4096:
            raise ConfigError(f"num_perm must be between 1 and 4096, got {num_perm}")
        self.num_perm, self.seed, self.scheme = num_perm, seed, scheme
        self.a, self.b = permutations(num_perm, seed, scheme)

    def signatures(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """uint32 ``[documents, num_perm]`` signatures; document ``i`` is ``hashes[offsets[i]:offsets[i+1]]``."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        offsets = np.asarray(offsets, dtype=np.int64)
        n_docs = len(offsets) - 1
        out = np.full((n_docs, self.num_perm), MAX_HASH, dtype=np.uint32)
        if self.scheme == "affine32":
            values = fmix32(((hashes >> np.uint64(32)) ^ hashes).astype(np.uint32))
        else:
            values = hashes
        block = max(1, BLOCK_ELEMENTS // self.num_perm)
        counts = np.diff(offsets)
        doc_start = 0
        while doc_start < n_docs:
            # whole documents per block, so each reduceat segment lies inside one block
            limit = offsets[doc_start] + block
            doc_end = max(doc_start + 1, int(np.searchsorted(offsets, limit, side="right")) - 1)
            doc_end = min(doc_end, n_docs)
            lo, hi = int(offsets[doc_start]), int(offsets[doc_end])
            if hi > lo:
                phv = self._permute(values[lo:hi])
                nonempty = np.nonzero(counts[doc_start:doc_end])[0]
                seg = offsets[doc_start:doc_end][nonempty] - lo
                out[doc_start + nonempty] = np.minimum.reduceat(phv, seg, axis=1).T
            doc_start = doc_end
        return out

    def _permute(self, values: np.ndarray) -> np.ndarray:
        """``[num_perm, len(values)]`` uint32 permuted hashes (this layout makes the per-document
        ``reduceat`` run along contiguous memory: ~4x faster than the transpose)."""
        with np.errstate(over="ignore"):
            phv = np.multiply(self.a[:, None], values[None, :])
            phv += self.b[:, None]
            if self.scheme == "affine32":
                return phv
            return mod_mersenne(phv).astype(np.uint32)  # the low 32 bits, as datasketch's mask

    def signatures_of_sets(self, sets: Sequence[np.ndarray]) -> np.ndarray:
        """Signatures of documents given as separate arrays of shingle hashes."""
        offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in sets], out=offsets[1:])
        flat = np.concatenate([np.asarray(s, dtype=np.uint64) for s in sets]) if sets else np.zeros(0, np.uint64)
        return self.signatures(flat, offsets)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal minima: the MinHash estimate of Jaccard similarity (row-wise for 2-D)."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)
