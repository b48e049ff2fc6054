"""Chinese segmentation speed: lmkit max-probability vs jieba.lcut(HMM=False) on zh.txt.

Both use jieba's dictionary, loaded and warmed before timing (dictionary load is excluded
and reported separately). Each figure is the median of 5 passes over the file, line by line.
Prints characters/second for jieba and for each lmkit method (maxprob, FMM, BMM, BiMM) and
how many lines lmkit's maxprob segments exactly as jieba does. The last line is the
throughput ratio ours(maxprob)/jieba: higher is better, > 1 means lmkit is faster.
Usage: python bench/bench_segment.py [CORPUS_DIR]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jieba

from lmkit.corpus import write_corpora
from lmkit.tokenizers.segment import (
    Dictionary,
    MaxProbSegmenter,
    backward_max_match,
    bidirectional_max_match,
    forward_max_match,
    jieba_dictionary_path,
)


def best_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else write_corpora(Path(__file__).parent / "corpus")
    lines = (corpus / "zh.txt").read_text(encoding="utf-8").splitlines()
    n_chars = sum(map(len, lines))
    jieba.setLogLevel(60)
    t = time.perf_counter()
    jieba.initialize()  # from jieba's pickle cache after the first run
    t_jieba_load = time.perf_counter() - t
    t = time.perf_counter()
    d = Dictionary.load(jieba_dictionary_path())  # parses dict.txt every time
    t_load = time.perf_counter() - t
    seg = MaxProbSegmenter(d)
    seg.lcut(lines[0]), forward_max_match(lines[0], d), backward_max_match(lines[0], d)

    t_jieba = best_time(lambda: [jieba.lcut(s, HMM=False) for s in lines])
    t_ours = best_time(lambda: [seg.lcut(s) for s in lines])
    t_fmm = best_time(lambda: [forward_max_match(s, d) for s in lines])
    t_bmm = best_time(lambda: [backward_max_match(s, d) for s in lines])
    t_bimm = best_time(lambda: [bidirectional_max_match(s, d) for s in lines])
    agree = sum(seg.lcut(s) == jieba.lcut(s, HMM=False) for s in lines)
    print(f"jieba {jieba.__version__}, Python {sys.version.split()[0]}")
    print(f"zh.txt: {n_chars:,} characters, {len(lines):,} lines; identical to jieba on {agree}/{len(lines)} lines")
    print(f"dictionary load (not timed below): jieba {t_jieba_load:.2f} s, lmkit {t_load:.2f} s")
    rows = [("jieba (HMM off)", t_jieba), ("lmkit maxprob", t_ours), ("lmkit FMM", t_fmm), ("lmkit BMM", t_bmm),
            ("lmkit BiMM", t_bimm)]
    for name, t in rows:
        print(f"{name:<16} {n_chars / t / 1e6:6.3f} M chars/s  ({t:.3f} s)")
    print(f"ratio ours/jieba speed: {t_jieba / t_ours:.2f}")


if __name__ == "__main__":
    main()
