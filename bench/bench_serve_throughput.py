"""Server throughput: concurrent requests (continuous batching) vs the same requests one at a time.

A randomly initialised Llama (hidden 384, 6 layers, 6 heads, intermediate 1024, fp32, vocab
of a byte-level BPE trained on bench/corpus/en.txt, ~8k) is saved with its tokenizer.json and
served by `lmkit serve` in a subprocess (its own 2 torch threads). The client sends the same
N completion requests (prompts: N sentences of the corpus, 64 new tokens each, greedy, EOS
disabled so every request produces all 64 tokens):

    sequential   one request at a time (each waits for the previous reply)
    concurrent   up to C requests in flight at once (asyncio + httpx)

and measures new tokens/s = sum of usage.completion_tokens / wall time. The outputs of the
two runs are checked to be identical (batching must not change greedy results). Each mode is
run --repeats times alternately; medians are reported, and the ratio is the median of the
per-pair ratios (each pair runs back to back, so load from other jobs hits both alike). Also printed: the mean decode batch
size from the server's /metrics.

Last line: `ours/peer` = concurrent tokens/s / sequential tokens/s (target >= 3 at C = 8).

    python3 bench/bench_serve_throughput.py [--requests 16] [--concurrency 8] [--max-tokens 64]
                                            [--kv-cache paged|contiguous]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def english_corpus() -> Path:
    from lmkit.corpus import write_corpora

    return write_corpora(ROOT / "bench" / "corpus") / "en.txt"


def build_model_dir(path: Path) -> None:
    import torch

    from lmkit.hub import save_pretrained
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset
    from lmkit.tokenizers.bpe import BPETokenizer

    text = english_corpus().read_text(encoding="utf-8")[:2_000_000]
    tok = BPETokenizer.train([text], vocab_size=8192, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    cfg = preset("llama-small", vocab_size=tok.vocab_size, n_kv_heads=6, max_seq_len=512, eos_token_id=None,
                 tie_embeddings=False)
    model = DecoderLM(cfg).eval()
    save_pretrained(model, path)
    tok.save_hf_json(path / "tokenizer.json")


def prompts_from_corpus(n: int) -> list[str]:
    text = english_corpus().read_text(encoding="utf-8")
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text[:200_000]) if 60 <= len(s.strip()) <= 160]
    return sents[:n]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def run(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[float, int, list[str]]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    texts = [None] * len(prompts)
    total = 0

    async def one(client, i, p):
        nonlocal total
        async with sem:
            r = await client.post(url + "/v1/completions", json={
                "model": "bench", "prompt": p, "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            body = r.json()
            texts[i] = body["choices"][0]["text"]
            total += body["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))
        return time.perf_counter() - start, total, texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache", choices=["paged", "contiguous"], default="paged", help="the server's KV layout")
    args = ap.parse_args()
    import httpx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "bench"
        build_model_dir(model_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        env.pop("LMKIT_API_KEY", None)
        proc = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", str(model_dir), "--port", str(port),
                                 "--model-name", "bench", "--max-batch-size", str(args.concurrency),
                                 "--threads", str(args.threads), "--kv-cache", args.kv_cache,
                                 "--log-level", "warning"], env=env)
        try:
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
                if proc.poll() is not None:
                    raise SystemExit("server failed to start")
            prompts = prompts_from_corpus(args.requests)
            asyncio.run(run(url, prompts[:2], 2, 8))  # warm-up
            seq, conc = [], []
            ref = None
            for _ in range(args.repeats):
                t, n, texts = asyncio.run(run(url, prompts, 1, args.max_tokens))
                seq.append(n / t)
                ref = ref or texts
                assert texts == ref, "sequential outputs changed between runs"
                t, n, texts = asyncio.run(run(url, prompts, args.concurrency, args.max_tokens))
                conc.append(n / t)
                assert texts == ref, "concurrent (batched) outputs differ from sequential ones"
                assert n == args.requests * args.max_tokens
            metrics = httpx.get(url + "/metrics").text
            steps = float(re.search(r"^lmkit_decode_steps_total (\S+)$", metrics, re.M).group(1))
            rows = float(re.search(r"^lmkit_decode_batch_rows_total (\S+)$", metrics, re.M).group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    s, c = statistics.median(seq), statistics.median(conc)
    print(f"model: Llama hidden 384, 6 layers, fp32; torch {torch.__version__}, {args.threads} threads, "
          f"{args.requests} requests x {args.max_tokens} new tokens, greedy")
    print(f"sequential (1 in flight):      {s:8.1f} new tokens/s   runs: {', '.join(f'{x:.1f}' for x in seq)}")
    print(f"concurrent ({args.concurrency} in flight):      {c:8.1f} new tokens/s   runs: "
          f"{', '.join(f'{x:.1f}' for x in conc)}")
    print(f"mean decode batch over all runs: {rows / steps:.2f}; outputs identical in both modes")
    pairs = [b / a for a, b in zip(seq, conc)]
    print(f"per-pair ratios: {', '.join(f'{r:.2f}' for r in pairs)}; ratio of medians {c / s:.2f}")
    print(f"ours/peer (concurrent/sequential, median of pairs): {statistics.median(pairs):.2f}")


if __name__ == "__main__":
    main()
