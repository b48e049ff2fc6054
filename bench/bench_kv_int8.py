"""The int8 KV cache (`kv_cache_dtype="int8"`, models/quantized_kv_cache.py) against the float
cache: accuracy, memory and decode step time.

Accuracy, with a trained checkpoint (MODEL_DIR, e.g. the one `lmkit quickstart` writes) and a
text file: perplexity of --ctx-token windows, teacher forced through one forward over a cache
(the int8 cache dequantizes what it stores, so the prompt's own attention already sees int8
keys / values), fp32 cache vs int8 cache. Without a checkpoint only the random model runs.

Long context, a random Llama (hidden 512, 4 layers, 8/2 heads, head_dim 64): relative logit
error of the last position after a --long-token prompt, cache bytes, and the median time of
one decode step (batch 1, fused step) at that context, fp32 and bf16 model, each cache.

    python3 bench/bench_kv_int8.py [--model MODEL_DIR --text corpus.txt] [--long 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lmkit.infer.runner import fast_decoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.kv_cache import KVCache
from lmkit.models.quantized_kv_cache import Int8KVCache


@torch.inference_mode()
def perplexity(model, windows: list[list[int]], cache_cls) -> float:
    nll, n = 0.0, 0
    for ids in windows:
        x = torch.tensor([ids])
        cache = cache_cls.for_model(model, 1, len(ids))
        logits = model(x[:, :-1], kv_cache=cache).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        n += len(ids) - 1
    return math.exp(nll / n)


@torch.inference_mode()
def long_context(model, length: int, steps: int = 20) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    fused = fast_decoder(model, length + steps + 1)
    pos = torch.arange(length + steps + 1)[None]
    caches, logits = {}, {}
    for name, cls in (("float", KVCache), ("int8", Int8KVCache)):
        caches[name] = cls.for_model(model, 1, length + steps + 1)
        logits[name] = model(ids, kv_cache=caches[name]).logits[:, -1].float()
    times = {name: [] for name in caches}
    tok = ids[:, -1:]
    for s in range(steps):  # alternately, so that the load of a shared machine hits both alike
        for name, cache in caches.items():
            t0 = time.perf_counter()
            fused(tok, pos[:, length + s: length + s + 1], cache, None, True)
            times[name].append(time.perf_counter() - t0)
    out = {name: (logits[name], caches[name].memory_bytes(), statistics.median(times[name][2:]) * 1e3)
           for name in caches}
    ref = out["float"][0]
    err = ((out["int8"][0] - ref).norm() / ref.norm()).item()
    same = bool((out["int8"][0].argmax(-1) == ref.argmax(-1)).all())
    return {"rel_logit_err": err, "argmax_equal": same,
            "bytes": (out["float"][1], out["int8"][1]), "step_ms": (out["float"][2], out["int8"][2])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--text", default=None)
    ap.add_argument("--ctx", type=int, default=None, help="window length (default: the model's max_seq_len)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--long", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from lmkit.hub import load_pretrained
        from lmkit.tokenizers.loading import load_tokenizer

        model = load_pretrained(args.model)
        tok = load_tokenizer(args.model)
        ctx = args.ctx or model.config.max_seq_len
        text = open(args.text, encoding="utf-8").read()
        ids = tok.encode(text[-(ctx * args.windows * 8):])  # the end of the file: held out by quickstart's split
        windows = [ids[i * ctx:(i + 1) * ctx] for i in range(min(args.windows, len(ids) // ctx))]
        p32, p8 = perplexity(model, windows, KVCache), perplexity(model, windows, Int8KVCache)
        print(f"trained model {args.model}: {len(windows)} windows of {ctx} tokens: perplexity fp32 cache "
              f"{p32:.4f}, int8 cache {p8:.4f} ({(p8 / p32 - 1) * 100:+.3f} %)")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32000, d_model=512, n_layers=4, n_heads=8, n_kv_heads=2, d_ff=1408,
                      max_seq_len=args.long + 64, model_type="llama")
    model = DecoderLM(cfg).eval()
    for dtype in (torch.float32, torch.bfloat16):
        r = long_context(model.to(dtype), args.long)
        (fb, ib), (ft, it) = r["bytes"], r["step_ms"]
        print(f"random Llama {str(dtype)[6:]}, context {args.long}: rel logit err {r['rel_logit_err']:.2e}, "
              f"argmax equal {r['argmax_equal']}, cache {fb / 2**20:.1f} -> {ib / 2**20:.1f} MiB "
              f"({ib / fb:.2f}x), decode step {ft:.2f} -> {it:.2f} ms ({it / ft:.2f}x)")


if __name__ == "__main__":
    main()
