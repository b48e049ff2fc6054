"""Paged vs contiguous KV cache: concurrent sequences at the same KV memory budget.

A contiguous cache gives every running row one strip as long as the longest row may become
(the serving engine's `kv_cache="contiguous"`: all rows share one [B, kv_heads, capacity,
head_dim] tensor whose capacity is the longest cached prefix + the most tokens any row may
still add), so under a memory budget one long request shrinks the batch for everybody. The
paged cache (`kv_cache="paged"`, lmkit.infer.paged_kv) holds only the blocks each row has
filled, and preempts the newest request when a running row needs a block that is not there.

Workload (mixed lengths, seeded): --requests requests, 70% short (prompt 16-64, 16-48 new
tokens), 20% medium (prompt 128-256, 32-96 new), 10% long (prompt 384-640, 64-128 new); greedy,
EOS off, all queued at once. Model: a randomly initialised Llama (hidden 256, 4 layers, 4
heads, 2 KV heads, intermediate 704, vocab 4096, fp32). Both engines get the same budget of
--kv-blocks blocks of 16 tokens and --max-batch-size 64 (memory, not the batch limit, binds).
Every output is checked to equal sequential `lmkit.infer.generate` (greedy).

Reported per layout: the concurrency sustained (mean running sequences per decode step while
requests were still queued, i.e. while the budget, not the supply of work, bounded the batch),
the mean over all steps (the tail, where the queue has drained, included), the peak, decode
steps, preemptions, wall time and new tokens/s.

    python3 bench/bench_paged_kv.py [--requests 48] [--kv-blocks 192] [--threads 2]

Last line: sustained concurrency paged / contiguous (target >= 2).
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import torch

from lmkit.infer import GenerationConfig, generate
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.serve.engine import Engine


def build_model() -> DecoderLM:
    cfg = ModelConfig(model_type="llama", arch="decoder", vocab_size=4096, d_model=256, n_layers=4, n_heads=4,
                      n_kv_heads=2, d_ff=704, max_seq_len=1024, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", tie_embeddings=False, eos_token_id=None)
    torch.manual_seed(0)
    return DecoderLM(cfg).eval()


def workload(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.7:
            plen, new = rng.randint(16, 64), rng.randint(16, 48)
        elif u < 0.9:
            plen, new = rng.randint(128, 256), rng.randint(32, 96)
        else:
            plen, new = rng.randint(384, 640), rng.randint(64, 128)
        out.append(([rng.randrange(3, 4096) for _ in range(plen)], new))
    return out


def serve_all(engine: Engine, work) -> tuple[list[list[int]], float]:
    """Queue every request before the engine looks, wait for all: (token ids per request, seconds)."""
    tokens = [[] for _ in work]
    left = threading.Semaphore(0)

    def cb(i):
        def f(ev):
            if ev.error:
                raise SystemExit(ev.error)
            tokens[i].append(ev.token)
            if ev.finish_reason:
                left.release()
        return f

    start = time.perf_counter()
    with engine._lock:
        for i, (prompt, new) in enumerate(work):
            engine.submit(prompt, GenerationConfig(max_new_tokens=new), cb(i))
    for _ in work:
        left.acquire()
    return tokens, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--kv-blocks", type=int, default=192)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    work = workload(args.requests)
    expected = [generate(model, [p], max_new_tokens=n).sequences[0] for p, n in work]
    rows = {}
    for layout in ("contiguous", "paged"):
        engine = Engine(model, None, max_batch_size=args.max_batch_size, kv_cache=layout, kv_blocks=args.kv_blocks,
                        block_size=16)
        got, secs = serve_all(engine, work)
        engine.stop()
        assert got == expected, f"{layout}: an output differs from sequential generate"
        st = engine.stats
        rows[layout] = (st.queued_rows / st.queued_steps, st.batch_rows / st.decode_steps, st.max_running,
                        st.decode_steps, st.preemptions, secs, st.generated_tokens / secs)
    budget = args.kv_blocks * 16
    print(f"model: Llama hidden 256, 4 layers, fp32; torch {torch.__version__}, {args.threads} threads; "
          f"{args.requests} requests (prompt {min(len(p) for p, _ in work)}-{max(len(p) for p, _ in work)} tokens), "
          f"KV budget {budget} tokens ({args.kv_blocks} blocks of 16)")
    print(f"{'layout':<11} {'sustained':>9} {'mean':>6} {'peak':>5} {'decode steps':>12} {'preemptions':>11} "
          f"{'wall s':>7} {'new tok/s':>9}")
    for layout, (sus, mean, peak, steps, pre, secs, tps) in rows.items():
        print(f"{layout:<11} {sus:9.2f} {mean:6.2f} {peak:5d} {steps:12d} {pre:11d} {secs:7.1f} {tps:9.1f}")
    print("outputs of both layouts equal sequential generate (greedy)")
    print(f"ours/peer (sustained concurrent sequences, paged / contiguous): {rows['paged'][0] / rows['contiguous'][0]:.2f}")


if __name__ == "__main__":
    main()
