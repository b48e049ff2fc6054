#!/usr/bin/env python3
"""Step time of every parallel strategy on this machine (CPU, gloo), and each one's
communication volume per step computed from the shapes (issue 23).

One Llama-shaped DecoderLM (vocab 8192, d_model 256, 4 layers, 8 heads / 4 KV heads, d_ff 704),
fp32, AdamW, sequences of 256 tokens, a global batch of 8 rows per step, trained by lmkit's
Trainer for STEPS steps; the median step time after 2 warm-up steps. The peer is the same run
in one process (grad_accum 2 over the same rows). Every process runs one torch thread.

  strategy   processes   layout
  none       1           one process, 2 accumulated micro-batches of 4 rows
  ddp        2           each rank 4 rows, gradients all-reduced
  fsdp       2           each rank 4 rows, params all-gathered, grads reduce-scattered
  tp         2           both ranks the same 8 rows, every layer split in 2
  tp+sp      2           tp with sequence parallelism
  pp-gpipe   2           2 stages of 2 layers, 4 micro-batches of 2 rows
  pp-1f1b    2           the same with 1F1B
  fsdp x tp  4           dp 2 x tp 2 (4 processes on the cores there are)
  pp x dp    4           pp 2 x dp 2: each dp rank 4 rows through 2 stages (2 micro-batches),
                         stage gradients all-reduced over dp (torch's replicate)
  pp x tp    4           pp 2 x tp 2: 8 rows through 2 stages (4 micro-batches), each
                         stage's layers split in 2, the LM head gathering its logits

    OMP_NUM_THREADS=1 python3 bench/bench_parallel_strategies.py [--steps 8] [--skip-4] [--only none,pp x dp]

Last line: best 2-process step time / one-process step time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile

import torch
import torch.multiprocessing as mp

MODEL = dict(model_type="llama", vocab_size=8192, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=704,
             max_seq_len=256, dropout=0.0)
ROWS, SEQ = 8, 256

LAYOUTS = {  # name: (processes, TrainConfig keywords, rows per batch the data yields)
    "none": (1, dict(grad_accum_steps=2), 4),
    "ddp": (2, dict(parallel={"dp": 2}), 4),
    "fsdp": (2, dict(parallel={"dp": 2, "fsdp": True}), 4),
    "tp": (2, dict(parallel={"tp": 2}), 8),
    "tp+sp": (2, dict(parallel={"tp": 2, "sequence_parallel": True}), 8),
    "pp-gpipe": (2, dict(parallel={"pp": 2, "pp_schedule": "gpipe", "pp_microbatches": 4}), 8),
    "pp-1f1b": (2, dict(parallel={"pp": 2, "pp_schedule": "1f1b", "pp_microbatches": 4}), 8),
    "fsdp x tp": (4, dict(parallel={"dp": 2, "tp": 2, "fsdp": True}), 4),
    "pp x dp": (4, dict(parallel={"pp": 2, "dp": 2, "pp_microbatches": 2}), 4),
    "pp x tp": (4, dict(parallel={"pp": 2, "tp": 2, "pp_microbatches": 4}), 8),
}


def _data(rows: int, steps: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, MODEL["vocab_size"], (steps * ROWS // rows, rows, SEQ), generator=g)
    return [{"input_ids": b, "labels": b} for b in ids]


def _run(rank: int, world: int, port: int, name: str, steps: int, out_dir: str, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.train import TrainConfig, Trainer

    _, kw, rows = LAYOUTS[name]
    torch.manual_seed(0)
    config = TrainConfig(max_steps=steps, lr=1e-3, precision="fp32", progress=False, compile=False,
                         schedule="constant", out_dir=out_dir, **kw)
    trainer = Trainer(DecoderLM(ModelConfig(**MODEL)), config, _data(rows, steps))
    records = trainer.train()
    times = [r["tokens_per_s"] for r in records]
    if trainer.dist.is_main:
        step_tokens = ROWS * SEQ
        queue.put([step_tokens / t for t in times[2:]])
    from lmkit.train.distributed import cleanup

    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_seconds(name: str, steps: int) -> float:
    world = LAYOUTS[name][0]
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as out:
        if world == 1:
            _run(0, 1, 0, name, steps, out, queue)
        else:
            mp.spawn(_run, args=(world, _free_port(), name, steps, out, queue), nprocs=world)
        return statistics.median(queue.get())


def communication_mb(name: str) -> float:
    """Bytes each process sends per step (ring collectives: an all-reduce of A bytes over n
    ranks sends 2(n-1)/n A, an all-gather or reduce-scatter (n-1)/n A), in MB."""
    from lmkit.models.config import ModelConfig
    from lmkit.train.memory import ParamCount

    cfg = ModelConfig(**MODEL)
    params = ParamCount.of(cfg).total * 4  # fp32 gradients / parameters
    act = ROWS * SEQ * cfg.d_model * 4  # one [rows, seq, d_model] activation
    if name == "none":
        return 0.0
    if name == "ddp":
        return 2 * 1 / 2 * params / 1e6
    if name == "fsdp":  # all-gather in forward and again in backward, reduce-scatter of the gradients
        return 3 * 1 / 2 * params / 1e6
    if name in ("tp", "tp+sp"):  # 2 all-reduces per block forward + 2 backward, + embedding fwd, head input bwd
        return (4 * cfg.n_layers + 2) * 2 * 1 / 2 * act / 1e6
    if name in ("pp-gpipe", "pp-1f1b"):  # stage 0 sends the hidden states of every micro-batch, stage 1 their gradients
        return act / 1e6
    if name == "fsdp x tp":  # TP inside a pair on its 4 rows, FSDP over the half-size shards across pairs
        return ((4 * cfg.n_layers + 2) * 2 * 1 / 2 * act / 2 + 3 * 1 / 2 * params / 2) / 1e6
    if name == "pp x dp":  # its half of the rows across the stage boundary, its stage's grads all-reduced
        return (act / 2 + 2 * 1 / 2 * params / 2) / 1e6
    if name == "pp x tp":  # the stage boundary, TP all-reduces on the stage's half of the layers (+ the
        # embedding or the head input), and the last stage's logits all-gather over the vocabulary
        logits = ROWS * SEQ * cfg.vocab_size * 4
        return (act + (4 * cfg.n_layers // 2 + 1) * 2 * 1 / 2 * act + 1 / 2 * logits / 2) / 1e6
    raise KeyError(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-4", action="store_true", help="leave out the 4-process runs")
    parser.add_argument("--only", default=None, help="comma-separated layouts to run (none is always run)")
    args = parser.parse_args()
    only = None if args.only is None else {"none", *(n.strip() for n in args.only.split(","))}
    results = {}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("| strategy | processes | step (s) | vs one process | sent per process per step (MB) |")
    print("|---|---|---|---|---|")
    for name, (world, _, _) in LAYOUTS.items():
        if (args.skip_4 and world == 4) or (only is not None and name not in only):
            continue
        results[name] = step_seconds(name, args.steps)
        print(f"| {name} | {world} | {results[name]:.3f} | {results[name] / results['none']:.2f} | "
              f"{communication_mb(name):.1f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(json.dumps(results))
    pairs = [v for k, v in results.items() if LAYOUTS[k][0] == 2]
    if pairs:
        print(f"{min(pairs) / results['none']:.3f}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    main()
