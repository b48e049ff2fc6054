"""`lmkit quickstart` end to end in fp32 and with `precision: auto`, alternating.

Each round runs the whole quickstart (corpus, tokenizer, shards, training, export, sample)
in a fresh process twice: once with the CPU's bf16 forced off (LMKIT_CPU_BF16=0, so `auto`
trains in fp32 — the old default), once with `auto` as detected (bf16 autocast on a CPU with
AVX512-BF16 or AMX). Same seed, same data. `--before-src DIR` runs the fp32 side from another
checkout's src/ (e.g. the code before the change) instead of this one.

Reported per side: wall time (median over rounds), validation perplexity and loss, and the
ratios. With `--steps 300` this is the loss-parity check of issue 25: the bf16 run's final
validation loss must be within 2 % of fp32's.

    python3 bench/bench_quickstart_precision.py [--steps 1200] [--rounds 1] [--before-src DIR]

Last line: `ratio fp32/auto time: X` (higher: auto is faster).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_quickstart(steps: int, src: Path, force_fp32: bool, out: Path) -> dict[str, float | str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("LMKIT_CPU_BF16", None)
    if force_fp32:
        env["LMKIT_CPU_BF16"] = "0"
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lmkit", "quickstart", "--out", str(out), "--steps", str(steps)],
        env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"quickstart failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ppl = float(re.search(r"validation perplexity ([\d.]+)", proc.stdout).group(1))
    chosen = re.search(r"precision: .*", proc.stderr)
    return {"wall": wall, "ppl": ppl, "loss": math.log(ppl), "precision": chosen.group(0) if chosen else "fp32 (old code)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--before-src", type=Path, default=SRC, help="src/ for the fp32 side (default: this checkout)")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"quickstart --steps {args.steps}; fp32 side from {args.before_src}, auto side from {SRC}")
    runs: dict[str, list[dict]] = {"fp32": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("fp32", "auto") if r % 2 == 0 else ("auto", "fp32")
            for side in order:
                res = run_quickstart(
                    args.steps, args.before_src if side == "fp32" else SRC, side == "fp32", Path(tmp) / f"{side}{r}"
                )
                runs[side].append(res)
                print(f"round {r} {side:4s}: {res['wall']:7.1f} s  val ppl {res['ppl']:.2f}  "
                      f"loss {res['loss']:.4f}  [{res['precision']}]", flush=True)
    med = {s: statistics.median(x["wall"] for x in v) for s, v in runs.items()}
    loss = {s: statistics.median(x["loss"] for x in v) for s, v in runs.items()}
    print(f"median wall: fp32 {med['fp32']:.1f} s, auto {med['auto']:.1f} s; load average now {os.getloadavg()}")
    print(f"val loss: fp32 {loss['fp32']:.4f}, auto {loss['auto']:.4f}; "
          f"relative difference {(loss['auto'] - loss['fp32']) / loss['fp32']:+.2%}")
    print(f"ratio fp32/auto time: {med['fp32'] / med['auto']:.3f}")


if __name__ == "__main__":
    main()
