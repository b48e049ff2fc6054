"""Embedded store at scale: 100k clustered vectors of dim 384 — exact search vs the faiss HNSW
index (EmbeddedStore ann="hnsw"): query latency, QPS and recall@10 against exact top-10.

    flock /tmp/lmkit-bench.lock env OMP_NUM_THREADS=1 python3 bench/bench_rag_ann.py

Data: 1000 Gaussian cluster centres, each vector = centre + noise (so neighbourhoods are
real, as with sentence embeddings), L2-normalised; 300 queries drawn the same way. Target:
recall@10 >= 0.95 at >= 10x the exact QPS. Last line: ours/peer = HNSW QPS / exact QPS at
the default ef_search.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()

    import faiss

    from lmkit.rag.embedder import EmbedderIdentity
    from lmkit.rag.store_embedded import EmbeddedStore

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, args.dim)).astype(np.float32)
    assign = rng.integers(0, 1000, args.n)
    vecs = centers[assign] + 0.6 * rng.normal(size=(args.n, args.dim)).astype(np.float32)
    queries = centers[rng.integers(0, 1000, args.queries)] + 0.6 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    ident = EmbedderIdentity("synthetic", args.dim, "0" * 64)
    ids = [str(i) for i in range(args.n)]
    store = EmbeddedStore(ident, ann="hnsw", ann_min_size=10**9)  # graph built explicitly below
    t = time.perf_counter()
    store.add(ids, vecs, [""] * args.n, [{} for _ in ids])
    print(f"{args.n} vectors of dim {args.dim} added in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    exact = [[h.id for h in store.search_exact(q, 10)] for q in queries]
    exact_s = (time.perf_counter() - t) / args.queries
    print(f"exact: {1000 * exact_s:.2f} ms/query, {1 / exact_s:.0f} QPS")

    t = time.perf_counter()
    store.build_ann()
    print(f"HNSW (M={store.hnsw_m}, efConstruction={store.ef_construction}) built in {time.perf_counter() - t:.1f} s")
    print("| ef_search | recall@10 | ms/query | QPS | speed-up vs exact |")
    print("|---|---|---|---|---|")
    default_ratio = None
    for ef in (16, 32, 64, 128):
        store.ef_search = ef
        t = time.perf_counter()
        got = [[h.id for h in store.search(q, 10)] for q in queries]
        s = (time.perf_counter() - t) / args.queries
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
        print(f"| {ef} | {recall:.4f} | {1000 * s:.3f} | {1 / s:.0f} | {exact_s / s:.1f}x |")
        if ef == 64:
            default_ratio = exact_s / s
    print(f"ours/peer (HNSW QPS / exact QPS, ef_search=64): {default_ratio:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
