#!/usr/bin/env python3
"""Near-duplicate dedup of N (default 1,000,000) short documents: time and peak memory.

The documents are built from the non-blank lines of bench/corpus/en.txt (`lmkit.corpus`): a
fresh document joins two random lines (~15 words); 10 % of documents are planted exact
copies of an earlier fresh document (upper-cased, spacing changed: equal after
normalisation) and 10 % planted near copies (the last word replaced: Jaccard of word
5-gram sets ~0.8-0.9). They are written to a JSON Lines file, then
`lmkit.data.dedup.deduplicate` reads it twice (exact + MinHash-LSH at threshold 0.7, 128
permutations, signature shards on disk) and writes the kept records to a second file, as
`lmkit data dedup` does.

Reported: wall time and documents/s, the peak resident memory of the process (ru_maxrss,
which includes the Python interpreter, numpy and the corpus lines, printed apart as the
baseline before the dedup starts), and how many planted copies were removed. No peer here:
the last line is ``ours/peer: n/a`` only so the bench layout stays uniform.

    OMP_NUM_THREADS=1 python3 bench/bench_dedup_1m.py [N]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmkit.corpus import write_corpora
from lmkit.data.dedup import DedupConfig, deduplicate
from lmkit.data.records import RecordWriter, iter_records


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    text = (write_corpora(Path(__file__).parent / "corpus") / "en.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.split("\n") if len(ln.split()) >= 4]
    del text
    rng = np.random.default_rng(0)
    kind = rng.choice(3, size=n, p=[0.8, 0.1, 0.1])  # 0 fresh, 1 exact copy, 2 near copy
    kind[0] = 0
    first, second = rng.integers(0, len(lines), n), rng.integers(0, len(lines), n)
    fresh = np.flatnonzero(kind == 0)
    # each copy points at a random earlier fresh document
    source = np.arange(n)
    copies = np.flatnonzero(kind != 0)
    earlier = np.searchsorted(fresh, copies) - 1  # fresh documents before each copy
    source[copies] = fresh[(rng.random(len(copies)) * (earlier + 1)).astype(np.int64)]

    def doc(i: int) -> str:
        j = source[i]
        base = f"{lines[first[j]]} {lines[second[j]]}"
        if kind[i] == 1:
            return "  ".join(base.upper().split(" "))
        if kind[i] == 2:
            return base.rsplit(" ", 1)[0] + " zebra"
        return base

    with tempfile.TemporaryDirectory(prefix="lmkit-bench-dedup-") as tmp:
        src, out = Path(tmp) / "docs.jsonl", Path(tmp) / "kept.jsonl"
        t = time.perf_counter()
        with open(src, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"id": i, "text": doc(i)}) + "\n")
        t_gen = time.perf_counter() - t
        size_mb = src.stat().st_size / 1e6
        del lines
        base_rss = rss_mb()
        kept = np.zeros(n, dtype=bool)

        def write(record, w):
            kept[record.obj["id"]] = True
            w.write(record)

        t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        with RecordWriter(out) as w:
            report = deduplicate(lambda: iter_records([src]), lambda r: write(r, w), DedupConfig(), work_dir=tmp,
                                 progress=False)
        elapsed = time.perf_counter() - t
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
        peak = rss_mb()
    exact_removed = (~kept[kind == 1]).mean()
    near_removed = (~kept[kind == 2]).mean()
    fresh_removed = (~kept[kind == 0]).mean()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(f"{n:,} documents ({size_mb:.0f} MB JSON Lines, generated in {t_gen:.1f} s): "
          f"{(kind == 1).sum():,} planted exact and {(kind == 2).sum():,} planted near copies")
    print(f"dedup (exact + MinHash-LSH, threshold {report.config['threshold']}, {report.bands} bands x "
          f"{report.rows} rows): {elapsed:.1f} s wall ({cpu:.1f} s CPU), {n / elapsed:,.0f} documents/s")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (on {os.cpu_count()} cores)")
    print(f"peak memory: {peak:,.0f} MB resident (baseline before dedup {base_rss:,.0f} MB)")
    print(f"removed {report.exact_duplicates:,} exact + {report.near_duplicates:,} near duplicates; "
          f"duplicate rate {100 * report.duplicate_rate:.2f} %, {report.clusters:,} clusters, largest "
          f"{report.largest_clusters[:5]}")
    print(f"planted exact copies removed {100 * exact_removed:.2f} %, planted near copies removed "
          f"{100 * near_removed:.2f} %, fresh documents removed {100 * fresh_removed:.2f} % "
          f"(chance pairs sharing a line, and line pairs drawn twice)")
    print("ours/peer: n/a")


if __name__ == "__main__":
    main()
