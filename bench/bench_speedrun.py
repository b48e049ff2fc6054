"""`lmkit speedrun` (the whole life cycle, measured) on this machine, and the card's numbers.

    OMP_NUM_THREADS=1 python3 bench/bench_speedrun.py [--profile full|tiny] [--out DIR]

Runs the profile in this process (the library call `lmkit speedrun` makes), then prints per
stage: status, wall time, peak RSS and every number of the report card, and the overlap
between evaluation items and training data. The peer project has no such run (it deleted its
report card), so the ratio is against the profile's own budget (full: 30 min, tiny: 60 s).

Last line: `ratio total/budget: X` (<= 1: within budget).
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="full", choices=["full", "tiny"])
    ap.add_argument("--out", default=None, help="keep the run here (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from lmkit.rag.speedrun import run_speedrun
    from lmkit.rag.speedrun_profile import get_profile

    out = args.out or tempfile.mkdtemp(prefix=f"speedrun-{args.profile}-")
    result = run_speedrun(get_profile(args.profile), out, seed=args.seed)
    print()
    print("| stage | status | time (s) | peak RSS (MB) | numbers |")
    print("|---|---|---|---|---|")
    for s in result.stages:
        nums = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.metrics.items()
                         if k not in ("reply", "prompt", "grounded_question", "grounded_reply"))
        rss = f"{s.peak_rss_bytes / 2**20:.0f}" if s.peak_rss_bytes else "-"
        print(f"| {s.name} | {s.status} | {s.seconds:.1f} | {rss} | {nums} |")
    d = result.decontamination
    for name, s in d.get("sets", {}).items():
        print(f"overlap {name}: {s['found_before']}/{s['items']} before, {s['left_after']} after")
    print(f"card: {out}/card.md")
    print(f"total {result.total_s:.1f} s, budget {result.budget_s:.0f} s")
    print(f"ratio total/budget: {result.total_s / result.budget_s:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
