"""Structured output through the real server: every reply validates, and what the masks cost.

A randomly initialised Llama (hidden 384, 6 layers, fp32, the byte-level BPE of
bench_serve_throughput.py with the ChatML tokens, ~8k ids) is served by `lmkit serve` in a
subprocess. A random-weight model never writes valid JSON by itself; only the constraint
(llguidance masks, lmkit.infer.structured_output) can make it.

    validity   --requests chat requests (default 200) spread over 10 JSON schemas (nested
               objects, enums, arrays, numbers and integers with bounds, booleans, strict
               `additionalProperties: false`), response_format json_schema strict, sampled
               (temperature 1, seed i), --concurrency in flight, through the official `openai`
               client (AsyncOpenAI). Each reply must parse (json.loads) and validate
               (jsonschema); finish_reason must be "stop".
    overhead   decode ms per token, constrained vs unconstrained: streamed chat requests one
               at a time, the time between the first and the last content chunk divided by the
               tokens between them (inter-token latency, the prompt's prefill excluded);
               constrained = a JSON-schema reply, unconstrained = free text (a random model
               seldom picks its end token, so it runs to max_tokens). The same in process,
               without HTTP: the decode core's per-step time (`iter_steps`, the prefill step
               excluded) with and without a constraint. Also: the mask alone (allowed_mask +
               advance) on the same vocabulary.

Last line: `ours/peer` = constrained / unconstrained decode ms per token (1.00 = free).

    python3 bench/bench_structured_output.py [--requests 200] [--concurrency 8] [--latency-requests 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_throughput import english_corpus, free_port  # noqa: E402

S = {"type": "string", "maxLength": 12}
# Numbers carry a precision (multipleOf): without one JSON allows endless fraction digits, and a
# random-weight model, which has no reason to stop, writes digits until max_tokens (a trained one stops).
# Powers of two, so jsonschema's float arithmetic checks them exactly (12.2 % 0.1 != 0 in binary).
SCHEMAS = [
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"status": {"enum": ["active", "inactive", "banned"]},
                                      "score": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.0625}},
     "required": ["status", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 4}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 99999}, "admin": {"type": "boolean"},
        "email": S}, "required": ["id", "admin", "email"], "additionalProperties": False}},
     "required": ["user"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "array", "items": {"type": "number", "minimum": -90,
                                                                               "maximum": 90, "multipleOf": 0.125},
                                                "minItems": 2, "maxItems": 2}},
     "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"order": {"type": "object", "properties": {
        "items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["sku", "qty"], "additionalProperties": False}},
        "express": {"type": "boolean"}}, "required": ["items", "express"], "additionalProperties": False}},
     "required": ["order"], "additionalProperties": False},
    {"type": "object", "properties": {"level": {"enum": ["debug", "info", "warn", "error"]},
                                      "code": {"type": "integer", "minimum": 100, "maximum": 599},
                                      "retry": {"type": "boolean"}},
     "required": ["level", "code", "retry"], "additionalProperties": False},
    {"type": "object", "properties": {"temperature": {"type": "number", "minimum": -40, "maximum": 50,
                                                      "multipleOf": 0.25},
                                      "unit": {"enum": ["C", "F"]},
                                      "city": {"enum": ["Paris", "Rome", "Oslo", "Lima"]}},
     "required": ["temperature", "unit", "city"], "additionalProperties": False},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 3, "items": {
        "type": "array", "maxItems": 3, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
     "required": ["matrix"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"enum": ["x", "y", "z"]}, "n": {"type": "integer", "minimum": -5, "maximum": 5}},
        "required": ["c", "n"], "additionalProperties": False}}, "required": ["b"], "additionalProperties": False},
        "ok": {"type": "boolean"}}, "required": ["a", "ok"], "additionalProperties": False},
]


def build_model_dir(path: Path):
    import torch

    from lmkit.hub import save_pretrained
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset
    from lmkit.tokenizers.bpe import BPETokenizer

    text = english_corpus().read_text(encoding="utf-8")[:2_000_000]
    tok = BPETokenizer.train([text], vocab_size=8192, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    cfg = preset("llama-small", vocab_size=tok.vocab_size, n_kv_heads=6, max_seq_len=512,
                 eos_token_id=tok.token_to_id("<|endoftext|>"), tie_embeddings=False)
    save_pretrained(DecoderLM(cfg).eval(), path)
    tok.save_hf_json(path / "tokenizer.json")
    return tok


def fmt(i: int) -> dict:
    return {"type": "json_schema", "json_schema": {"name": f"schema_{i}", "schema": SCHEMAS[i], "strict": True}}


async def validity(client, n: int, concurrency: int) -> tuple[int, int, float, list[str]]:
    import jsonschema

    sem = asyncio.Semaphore(concurrency)
    bad: list[str] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        k = i % len(SCHEMAS)
        async with sem:
            r = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": f"Record {i}, as JSON."}], max_tokens=300,
                temperature=1, seed=i, response_format=fmt(k))
        text = r.choices[0].message.content
        tokens += r.usage.completion_tokens
        try:
            assert r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason}"
            jsonschema.validate(json.loads(text), SCHEMAS[k])
        except Exception as exc:  # noqa: BLE001 - collect every failure
            bad.append(f"request {i} schema {k}: {type(exc).__name__}: {str(exc)[:120]} | {text[:120]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n - len(bad), tokens, time.perf_counter() - start, bad


async def inter_token_ms(client, n: int, constrained: bool) -> list[float]:
    """Per request: (last chunk time - first chunk time) / (chunks - 1), streamed, one at a time."""
    out = []
    for i in range(n):
        kw = dict(response_format=fmt(i % len(SCHEMAS))) if constrained else {}
        stamps = []
        stream = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"Record {i}, as JSON."}], max_tokens=48,
            temperature=1, seed=i, stream=True, **kw)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
        if len(stamps) > 2:
            out.append((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3)
    return out


def mask_cost_us(model_dir: Path, steps: int = 400) -> float:
    """allowed_mask + advance per token, in process, on the served vocabulary (random walks over SCHEMAS)."""
    import random

    import torch

    from lmkit.infer.structured_output import compile_json_schema
    from lmkit.tokenizers.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    v, eos = tok.vocab_size, tok.token_to_id("<|endoftext|>")
    rng = random.Random(0)
    done = 0
    elapsed = 0.0
    k = 0
    while done < steps:
        c = compile_json_schema(tok, SCHEMAS[k % len(SCHEMAS)]).constraint([eos])
        k += 1
        for _ in range(200):
            t0 = time.perf_counter()
            m = c.allowed_mask(v)
            ids = torch.nonzero(m).flatten().tolist()
            t1 = time.perf_counter()
            tok_id = rng.choice(ids)
            if tok_id == eos:
                break
            t2 = time.perf_counter()
            c.advance(tok_id)
            elapsed += (t1 - t0) + (time.perf_counter() - t2)
            done += 1
    return elapsed / done * 1e6


def core_step_ms(model_dir: Path, n: int = 10) -> tuple[float, float]:
    """Median decode-step ms in process (lmkit.infer.iter_steps, step 0 = prefill excluded): free, constrained."""
    from lmkit.hub import load_pretrained
    from lmkit.infer import iter_steps
    from lmkit.infer.structured_output import compile_json_schema
    from lmkit.tokenizers.loading import load_tokenizer

    model, tok = load_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    free, cons = [], []
    for i in range(n):
        prompt = tok.encode(f"Record {i}, as JSON.")
        for out, constraint in ((free, None), (cons, compile_json_schema(tok, SCHEMAS[i % len(SCHEMAS)]))):
            last = None
            for _ in iter_steps(model, [prompt], tokenizer=tok, constraint=constraint, max_new_tokens=48,
                                do_sample=True, seed=i):
                now = time.perf_counter()
                if last is not None:
                    out.append((now - last) * 1e3)
                last = now
    return statistics.median(free), statistics.median(cons)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency-requests", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)  # 1: no OpenMP spin-waits on a shared machine
    args = ap.parse_args()
    import httpx
    import llguidance
    import openai
    import torch

    torch.set_num_threads(args.threads)  # the in-process measurements use as many threads as the server
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "bench"
        build_model_dir(model_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        env.pop("LMKIT_API_KEY", None)
        proc = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", str(model_dir), "--port", str(port),
                                 "--model-name", "bench", "--max-batch-size", str(args.concurrency),
                                 "--threads", str(args.threads), "--log-level", "warning"], env=env)
        try:
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
                if proc.poll() is not None:
                    raise SystemExit("server failed to start")

            async def run():
                client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
                await inter_token_ms(client, 2, True)  # warm-up (compiles, caches)
                await inter_token_ms(client, 2, False)
                ok, toks, secs, bad = await validity(client, args.requests, args.concurrency)
                free, cons = [], []
                for _ in range(2):  # alternate, so load from other jobs hits both alike
                    free += await inter_token_ms(client, args.latency_requests // 2, False)
                    cons += await inter_token_ms(client, args.latency_requests // 2, True)
                return ok, toks, secs, bad, free, cons

            ok, toks, secs, bad, free, cons = asyncio.run(run())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        mask_us = mask_cost_us(model_dir)
        core_free, core_cons = core_step_ms(model_dir)
    print(f"model: Llama hidden 384, 6 layers, fp32, random weights, vocab 8192; torch {torch.__version__}, "
          f"llguidance {llguidance.__version__}, openai {openai.__version__}, {args.threads} threads")
    print(f"validity: {ok}/{args.requests} replies parse and validate ({len(SCHEMAS)} schemas, "
          f"{args.concurrency} in flight, {toks} tokens in {secs:.1f} s = {toks / secs:.1f} tok/s)")
    for line in bad[:10]:
        print("  FAILED", line)
    f, c = statistics.median(free), statistics.median(cons)
    print(f"decode ms/token, one request at a time (median of {len(free)} / {len(cons)}): "
          f"unconstrained {f:.2f}, constrained {c:.2f}, overhead {c - f:+.2f} ms/token ({(c / f - 1) * 100:+.0f}%)")
    print(f"decode-core step ms, in process (median): unconstrained {core_free:.2f}, constrained {core_cons:.2f}, "
          f"overhead {core_cons - core_free:+.2f} ms ({(core_cons / core_free - 1) * 100:+.0f}%)")
    print(f"mask alone (allowed_mask + advance, in process): {mask_us:.0f} us/token")
    print(f"ours/peer (constrained/unconstrained ms per token): {c / f:.2f}")


if __name__ == "__main__":
    main()
