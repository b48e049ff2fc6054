#!/usr/bin/env python3
"""MinHash signatures, documents/s: lmkit (`Shingler` + `MinHasher`) vs `datasketch.MinHash.bulk`.

Same corpus (bench/corpus/en.txt from `lmkit.corpus`), same shingles (word 5-grams of the
normalised text), same num_perm (128), one process, best of 3. Two document sizes: every
non-blank line (short documents, ~10 words) and every blank-line paragraph (longer ones).

lmkit's time is the whole path text -> signatures (normalise, split words, hash shingles,
permute, take minima). datasketch's time starts from shingles ALREADY built as bytes (its API
takes bytes), i.e. it is given its input for free; the time to build them is printed apart.
Both use datasketch's default permutation scheme ("affine32"); lmkit's "mersenne" scheme
(``(a*x+b) mod 2^61-1``, datasketch's "legacy") is timed too. A sanity check compares the two
libraries' Jaccard estimates over the planted copies (they must agree to within MinHash noise).

    OMP_NUM_THREADS=1 python3 bench/bench_minhash.py [NUM_PERM]

Last line: ``ours/peer: X`` = lmkit documents/s / datasketch documents/s (the smaller of the two
document sizes; higher is better for lmkit).
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import datasketch
import numpy as np

from lmkit.corpus import write_corpora
from lmkit.data.minhash import MinHasher
from lmkit.data.shingles import Shingler

BATCH = 4096


def best_of(fn, repeats: int = 3) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def ours(docs: list[str], num_perm: int, scheme: str) -> np.ndarray:
    shingler, hasher = Shingler(5, "word"), MinHasher(num_perm, scheme=scheme)
    parts = []
    for i in range(0, len(docs), BATCH):
        hashes, offsets = shingler.hashes(docs[i : i + BATCH])
        parts.append(hasher.signatures(hashes, offsets))
    return np.concatenate(parts)


def main() -> None:
    num_perm = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    text = (write_corpora(Path(__file__).parent / "corpus") / "en.txt").read_text(encoding="utf-8")
    sets = {
        "lines": [ln for ln in text.split("\n") if ln.strip()],
        "paragraphs": [p for p in text.split("\n\n") if p.strip()],
    }
    print(f"python {platform.python_version()}, numpy {np.__version__}, datasketch {datasketch.__version__}, "
          f"num_perm {num_perm}, {platform.processor() or platform.machine()}")
    ratios = []
    for name, docs in sets.items():
        words = sum(len(d.split()) for d in docs)
        shingler = Shingler(5, "word")
        prepared, t_prep = best_of(lambda: [[s.encode() for s in shingler.shingle_strings(d)] for d in docs], 1)
        peer, t_peer = best_of(lambda: datasketch.MinHash.bulk(prepared, num_perm=num_perm))
        sig, t_ours = best_of(lambda: ours(docs, num_perm, "affine32"))
        _, t_mers = best_of(lambda: ours(docs, num_perm, "mersenne"))
        # sanity: the estimates of both libraries agree on (document, next document) pairs
        k = min(2000, len(docs) - 1)
        est_ours = np.mean(sig[:k] == sig[1 : k + 1], axis=1)
        est_peer = np.array([peer[i].jaccard(peer[i + 1]) for i in range(k)])
        gap = float(np.abs(est_ours - est_peer).mean())
        n = len(docs)
        print(f"{name}: {n} documents, {words / n:.1f} words each")
        print(f"  lmkit affine32   {n / t_ours:12,.0f} docs/s  (text -> signatures)")
        print(f"  lmkit mersenne   {n / t_mers:12,.0f} docs/s")
        print(f"  datasketch bulk  {n / t_peer:12,.0f} docs/s  (from prepared shingles; building them: "
              f"{t_prep:.2f} s more)")
        print(f"  mean |J_lmkit - J_datasketch| over {k} neighbour pairs: {gap:.4f}")
        ratios.append(t_peer / t_ours)
        print(f"  ratio {name}: {t_peer / t_ours:.2f}")
    print(f"ours/peer: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
