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

--step-time measures only the quickstart model's training step instead (llama-tiny, vocab
2048, batch 16 x 128, fused AdamW, clipping), fp32 vs bf16 autocast interleaved in one
process, timed by CPU time on one thread: usable on a machine too busy for end-to-end runs.

    python3 bench/bench_quickstart_precision.py --step-time [--repeats 20] [--compile]

--compile adds the bf16 step through `torch.compile` and prints its compile time (CPU seconds
of this process and its compile workers, and wall seconds).

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


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (inductor's compile workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def step_time(repeats: int, compile_too: bool = False) -> None:
    """CPU time of one quickstart training step, fp32 vs bf16 autocast, interleaved."""
    import torch

    sys.path.insert(0, str(SRC))
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import PRESETS

    torch.set_num_threads(1)
    cfg = ModelConfig.from_dict({**PRESETS["llama-tiny"], "vocab_size": 2048})
    ids = torch.randint(0, 2048, (16, 128), generator=torch.Generator().manual_seed(0))

    def make(bf16: bool, compiled: bool = False):
        torch.manual_seed(0)
        model = DecoderLM(cfg)
        if compiled:
            model = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = {"fp32": make(False), "auto": make(True)}
    if compile_too:
        steps["auto compiled"] = make(True, compiled=True)
        c0, w0 = cpu_seconds(), time.perf_counter()
        steps["auto compiled"]()
        print(f"compile (first bf16 step): {cpu_seconds() - c0:.1f} CPU s, {time.perf_counter() - w0:.1f} wall s")
    for s in steps.values():
        s(), s()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(repeats):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t = time.process_time()
            steps[name]()
            times[name].append(time.process_time() - t)
    tokens = ids.numel()
    print(f"torch {torch.__version__}, 1 thread, CPU time per step, load average {os.getloadavg()}")
    for name, ts in times.items():
        print(f"{name:4s} ({'fp32' if name == 'fp32' else 'bf16 autocast'}): best {tokens / min(ts):7.0f} tok/s, "
              f"median {tokens / statistics.median(ts):7.0f} tok/s")
    if compile_too:
        print(f"compiled/eager bf16 (median): {statistics.median(times['auto']) / statistics.median(times['auto compiled']):.3f}")
    print(f"best-step ratio {min(times['fp32']) / min(times['auto']):.3f}")
    print(f"ratio fp32/auto time: {statistics.median(times['fp32']) / statistics.median(times['auto']):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--before-src", type=Path, default=SRC, help="src/ for the fp32 side (default: this checkout)")
    ap.add_argument("--step-time", action="store_true", help="time only the training step (see above)")
    ap.add_argument("--repeats", type=int, default=20, help="--step-time: timed steps per side")
    ap.add_argument("--compile", action="store_true", help="--step-time: also the compiled bf16 step")
    args = ap.parse_args()
    if args.step_time:
        step_time(args.repeats, args.compile)
        return
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
