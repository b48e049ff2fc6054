"""Applying learned BPE merges to one word: the lowest-ranked adjacent pair first, leftmost
on ties, until no pair is a merge -- the rule of Hugging Face ``tokenizers`` and tiktoken.

Shared by byte-level BPE (``bpe.py``, ids of bytes) and SentencePiece-style BPE
(``sentencepiece_bpe.py``, ids of characters). ``ranks`` maps a pair of ids to its rank,
``merged`` a rank to the id the pair becomes. Short words run a plain list scan (a merge
changes only its neighbours' ranks); words over ``LONG_WORD`` symbols use a heap over a
linked list instead (same result, O(n log n)).
"""

from __future__ import annotations

import heapq
from itertools import repeat

NO_RANK = 1 << 62  # "not a merge": larger than any rank
LONG_WORD = 64  # symbols; longer words use the heap merge


def apply_merges(ids: list[int], ranks: dict[tuple[int, int], int], merged: dict[int, int]) -> tuple[int, ...]:
    """`ids` (modified in place) after every applicable merge."""
    if len(ids) < 2:
        return tuple(ids)
    if len(ids) > LONG_WORD:
        return _merge_long(ids, ranks, merged)
    # rs[k] = rank of the pair (ids[k], ids[k+1]); a merge at i changes only its neighbours
    get = ranks.get
    rs = list(map(get, zip(ids, ids[1:]), repeat(NO_RANK)))
    while True:
        r = min(rs)
        if r == NO_RANK:
            break
        i = rs.index(r)
        z = merged[r]
        ids[i : i + 2] = (z,)
        del rs[i]
        if i < len(rs):
            rs[i] = get((z, ids[i + 1]), NO_RANK)
        if i:
            rs[i - 1] = get((ids[i - 1], z), NO_RANK)
        elif not rs:
            break
    return tuple(ids)


def _merge_long(ids: list[int], ranks: dict[tuple[int, int], int], merged: dict[int, int]) -> tuple[int, ...]:
    """Same rule as ``apply_merges`` with a heap of (rank, position) over a linked list."""
    get = ranks.get
    n = len(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(r, i) for i, p in enumerate(zip(ids, ids[1:])) if (r := get(p)) is not None]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        if not alive[i]:
            continue
        j = nxt[i]
        if j >= n or get((ids[i], ids[j])) != r:
            continue  # stale: this pair has changed since it was pushed
        ids[i] = merged[r]
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            rk = get((ids[i], ids[k]))
            if rk is not None:
                heapq.heappush(heap, (rk, i))
        p = prv[i]
        if p >= 0:
            rp = get((ids[p], ids[i]))
            if rp is not None:
                heapq.heappush(heap, (rp, p))
    out = []
    i = 0
    while i < n:
        out.append(ids[i])
        i = nxt[i]
    return tuple(out)
