"""Greedy decode speed of tensor parallelism on CPU: one process vs TP=2 (two gloo processes).

A randomly initialised Llama (hidden 384, 6 layers, 6 heads / 2 KV heads, intermediate 1024,
vocab 8192, fp32) generates --new greedy tokens after a 32-token prompt, batch 1, EOS off:
  single      one process, 2 torch threads, the default decode step (fused where it can)
  single/fwd  one process, 2 torch threads, model.forward (what a TP rank runs: no fused step)
  tp2         two processes on loopback gloo, 1 thread each, the model sharded as `--tp 2` shards it
The token ids of all three are checked to be identical. TP pays where one device's memory or
bandwidth is the limit and the links are fast (NCCL on GPUs); on 2 CPU cores with gloo each decode
step pays ~4 all-reduces per layer pair plus the vocabulary all-gather through the kernel's loopback.

Last line: `ratio tp2/single tok/s: X` (higher is better for TP).

    python3 bench/bench_tensor_parallel_decode.py [--new 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

CFG = dict(arch="decoder", model_type="llama", vocab_size=8192, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2,
           d_ff=1024, max_seq_len=512, norm="rmsnorm", activation="silu", gated_ffn=True, position="rope",
           tie_embeddings=False)
PROMPT = [list(range(100, 132))]


def build():
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**CFG)).eval()


def timed(model, new: int, repeats: int, fused: bool = True) -> tuple[float, list[int]]:
    """(median new tokens/s, the tokens) over `repeats` runs after one warm-up."""
    from lmkit.infer import GenerationConfig, generate

    cfg = GenerationConfig(max_new_tokens=new, eos_token_id=[], fused=fused)
    generate(model, PROMPT, cfg)
    rates, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, PROMPT, cfg).sequences[0]
        rates.append(new / (time.perf_counter() - t0))
    return statistics.median(rates), out


def _rank(rank: int, port: int, new: int, repeats: int, queue) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lmkit.train.tensor_parallel import apply_tensor_parallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = apply_tensor_parallel(build(), init_device_mesh("cpu", (2,)), gather_logits=True)
    rate, out = timed(model, new, repeats)
    if rank == 0:
        queue.put((rate, out))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = build()
    single, ref = timed(model, args.new, args.repeats)
    plain, ref2 = timed(model, args.new, args.repeats, fused=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank, args=(port, args.new, args.repeats, queue), nprocs=2)
    tp, out = queue.get()
    assert ref == ref2 == out, "TP=2 generated other tokens than one process"
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.new} new tokens, batch 1, fp32")
    print(f"single (2 threads, fused step)   {single:8.1f} tok/s")
    print(f"single (2 threads, model.forward){plain:8.1f} tok/s")
    print(f"tp2    (2 x 1 thread, gloo)      {tp:8.1f} tok/s")
    print(f"ratio tp2/single tok/s: {tp / single:.2f}")


if __name__ == "__main__":
    main()
