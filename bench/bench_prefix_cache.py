"""Prefix caching: time to first token when a long shared system prompt is cached vs not.

A chat service sends the same long system prompt with every request. With automatic prefix
caching (lmkit.infer.paged_kv, the serving engine's default) the first request computes the
prompt's KV blocks (a miss) and every later request that starts with the same tokens reuses
them, prefilling only its own suffix (a hit).

Model: a randomly initialised Llama (hidden 512, 8 layers, 8 heads, 4 KV heads, intermediate
1408, vocab 8192, fp32). Each round draws a fresh 1,500-token system prompt and sends
1 + --hits requests, one after another, each the system prompt + its own 20-token user
suffix, 8 new tokens, greedy: the first is a miss, the rest are hits. TTFT is measured inside
the engine from submit to the first token. The same requests are then run on an engine with
prefix caching off, and the token ids must be identical (asserted), also with a pool so small
that cached blocks are evicted during the run (--evict-blocks).

    python3 bench/bench_prefix_cache.py [--rounds 3] [--hits 3] [--threads 2]

Last line: the ratio TTFT(miss) / TTFT(hit), medians (target >= 10).
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

import torch

from lmkit.infer import GenerationConfig
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.serve.engine import Engine

SYSTEM, SUFFIX, NEW = 1500, 20, 8


def build_model() -> DecoderLM:
    cfg = ModelConfig(model_type="llama", arch="decoder", vocab_size=8192, d_model=512, n_layers=8, n_heads=8,
                      n_kv_heads=4, d_ff=1408, max_seq_len=2048, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", tie_embeddings=False, eos_token_id=None)
    torch.manual_seed(0)
    return DecoderLM(cfg).eval()


def run(engine: Engine, prompt: list[int]) -> tuple[float, list[int]]:
    """One request, alone: (seconds to its first token, its token ids)."""
    first, done, tokens = [], threading.Event(), []
    start = time.perf_counter()

    def cb(ev):
        if not first:
            first.append(time.perf_counter() - start)
        tokens.append(ev.token)
        if ev.finish_reason or ev.error:
            done.set()

    engine.submit(prompt, GenerationConfig(max_new_tokens=NEW), cb)
    assert done.wait(600)
    return first[0], tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hits", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evict-blocks", type=int, default=110, help="a pool of this many 16-token blocks evicts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    rng = random.Random(0)
    rounds = []
    for _ in range(args.rounds):
        system = [rng.randrange(3, 8192) for _ in range(SYSTEM)]
        rounds.append([system + [rng.randrange(3, 8192) for _ in range(SUFFIX)] for _ in range(1 + args.hits)])
    engines = {
        "cached": Engine(model, None, max_batch_size=1).start(),
        "uncached": Engine(model, None, max_batch_size=1, prefix_caching=False).start(),
        "evicting": Engine(model, None, max_batch_size=1, kv_blocks=args.evict_blocks).start(),
    }
    run(engines["uncached"], [5] * 64)  # warm-up (first-call allocations)
    ttft = {"miss": [], "hit": [], "uncached": []}
    outputs = {k: [] for k in engines}
    for prompts in rounds:
        for i, p in enumerate(prompts):
            t, toks = run(engines["cached"], p)
            ttft["miss" if i == 0 else "hit"].append(t)
            outputs["cached"].append(toks)
            t, toks = run(engines["uncached"], p)
            ttft["uncached"].append(t)
            outputs["uncached"].append(toks)
            outputs["evicting"].append(run(engines["evicting"], p)[1])
    for e in engines.values():
        e.stop()
    assert outputs["cached"] == outputs["uncached"] == outputs["evicting"], "prefix caching changed an output"
    pool, evict = engines["cached"].pool, engines["evicting"].pool
    miss, hit, unc = (statistics.median(ttft[k]) for k in ("miss", "hit", "uncached"))
    print(f"model: Llama hidden 512, 8 layers, fp32; torch {torch.__version__}, {args.threads} threads; "
          f"system prompt {SYSTEM} tokens + {SUFFIX}-token suffix, {NEW} new tokens, {args.rounds} rounds")
    print(f"TTFT miss (cold cache):      {miss * 1000:8.1f} ms   runs: {', '.join(f'{x*1000:.0f}' for x in ttft['miss'])}")
    print(f"TTFT hit (prefix cached):    {hit * 1000:8.1f} ms   runs: {', '.join(f'{x*1000:.1f}' for x in ttft['hit'])}")
    print(f"TTFT without prefix caching: {unc * 1000:8.1f} ms")
    print(f"prefix cache: {pool.hits} block hits, {pool.misses} misses; evicting pool ({evict.n_blocks} blocks): "
          f"{evict.evictions} evictions, {evict.hits} hits")
    print(f"outputs identical with caching, without, and with evictions ({len(outputs['cached'])} requests)")
    print(f"ours/peer (TTFT miss / TTFT hit, medians): {miss / hit:.1f}")


if __name__ == "__main__":
    main()
