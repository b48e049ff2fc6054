"""Quantization quality, memory and speed on a small Llama-style model trained with lmkit.

1. Train a byte-level BPE tokenizer (lmkit) and a DecoderLM (RoPE, RMSNorm, SwiGLU, GQA) on
   bench/corpus/en.txt (the trained model is cached under runs/bench_quant_model_<steps>;
   2000 steps take ~25 min on 2 shared CPU cores).
2. Held-out perplexity (last 10 % of the corpus, never trained on) for fp32 and every method,
   weight memory of the quantized Linear layers vs fp32, forward tokens/s.
3. Peer: bitsandbytes' NF4 (quantize_4bit/dequantize_4bit on CPU) applied to the same weights.

    OMP_NUM_THREADS=1 flock /tmp/lmkit-bench.lock python3 bench/bench_quant_ppl.py [--steps 2000]

Last line: NF4 perplexity ours / bitsandbytes.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from lmkit.corpus import write_corpora  # noqa: E402
from lmkit.hub import load_pretrained, save_pretrained  # noqa: E402
from lmkit.models.config import ModelConfig  # noqa: E402
from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.quant.quantize_model import linear_weight_bytes, quantize_model, quantized_weight_bytes  # noqa: E402
from lmkit.tokenizers.bpe import BPETokenizer  # noqa: E402


def data(corpus: Path, cache: Path, vocab: int):
    text = corpus.read_text(encoding="utf-8")
    split = int(len(text) * 0.9)
    train_text, test_text = text[:split], text[split:]
    tok_path = cache / "tokenizer.json"
    if tok_path.exists():
        tok = BPETokenizer.load(tok_path)
    else:
        tok = BPETokenizer.train([train_text], vocab_size=vocab)
        cache.mkdir(parents=True, exist_ok=True)
        tok.save_hf_json(tok_path)
    return tok, torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(test_text))


def train(tok, ids, cache: Path, steps: int, seq: int, batch: int, seed: int = 0) -> DecoderLM:
    if (cache / "model.safetensors").exists():
        return load_pretrained(cache, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=192, n_layers=4, n_heads=6, n_kv_heads=2, d_ff=512,
                      max_seq_len=seq, model_type="llama", tie_embeddings=True)
    model = DecoderLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    save_pretrained(model.eval(), cache)
    return model.eval()


@torch.no_grad()
def perplexity(model, ids, seq: int, batch: int = 8) -> tuple[float, float]:
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].reshape(n, seq)
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        b = x[i:i + batch]
        out = model(b, labels=b)
        k = b.numel() - b.shape[0]
        total += out.loss.item() * k
        count += k
    dt = time.perf_counter() - t0
    return math.exp(total / count), n * seq / dt


def bnb_nf4(model):
    import bitsandbytes.functional as bf

    m = copy.deepcopy(model)
    names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"]
    for n in names:
        lin = m.get_submodule(n)
        q, s = bf.quantize_4bit(lin.weight.data, blocksize=64, quant_type="nf4", compress_statistics=True)
        lin.weight.data = bf.dequantize_4bit(q, s).float()
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--calib", type=int, default=32, help="GPTQ calibration sequences (from the training split)")
    ap.add_argument("--cache", default=None, help="default: runs/bench_quant_model_<steps>")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache or ROOT.parent / "runs" / f"bench_quant_model_{args.steps}")
    tok, train_ids, test_ids = data(write_corpora(ROOT / "corpus") / "en.txt", cache, args.vocab)
    print(f"tokens: train {len(train_ids)}, held-out {len(test_ids)}; vocab {tok.vocab_size}")
    model = train(tok, train_ids, cache, args.steps, args.seq, args.batch)
    test_ids = test_ids[: 64 * args.seq + 1]
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.calib,), generator=g)
    calib = torch.stack([train_ids[s:s + args.seq] for s in starts])

    base_ppl, base_tps = perplexity(model, test_ids, args.seq)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    fp32_bytes = linear_weight_bytes(model, names)
    rows = [("fp32", base_ppl, 1.0, base_tps)]
    configs = [
        ("int8 (weight-only, per channel)", "int8", {}),
        ("LLM.int8() (threshold 6)", "llm-int8", {}),
        ("NF4 + double quant (block 64)", "nf4", {}),
        ("RTN int4 (group 64)", "rtn", {"bits": 4, "group_size": 64}),
        ("GPTQ int4 (group 64)", "gptq", {"bits": 4, "group_size": 64, "calib": calib}),
        ("GPTQ int4 (group 64, act-order)", "gptq", {"bits": 4, "group_size": 64, "calib": calib, "act_order": True}),
        ("RTN int4 (one group per row)", "rtn", {"bits": 4, "group_size": None}),
        ("GPTQ int4 (one group per row)", "gptq", {"bits": 4, "group_size": None, "calib": calib}),
    ]
    results = {}
    for label, method, kw in configs:
        t0 = time.perf_counter()
        q = quantize_model(copy.deepcopy(model), method, **kw)
        qt = time.perf_counter() - t0
        ppl, tps = perplexity(q, test_ids, args.seq)
        ratio = fp32_bytes / quantized_weight_bytes(q)
        rows.append((label, ppl, ratio, tps))
        results[label] = ppl
        print(f"  {label}: ppl {ppl:.3f} ({qt:.1f}s to quantize)", flush=True)
    bnb_ppl = None
    try:
        bnb_ppl, bnb_tps = perplexity(bnb_nf4(model), test_ids, args.seq)
        rows.append(("bitsandbytes NF4 (peer, dequantized)", bnb_ppl, float("nan"), bnb_tps))
    except Exception as exc:  # noqa: BLE001
        print(f"  bitsandbytes unavailable: {exc}")

    print()
    print(f"machine: {platform.machine()} CPU, torch {torch.__version__}, threads 1; model d_model=192, 4 layers, "
          f"GQA 6/2 heads, d_ff 512, vocab {tok.vocab_size}, {sum(p.numel() for p in model.parameters())} params; "
          f"held-out {len(test_ids) - 1} tokens")
    print("| method | held-out ppl | Δ vs fp32 | Linear weight memory vs fp32 | forward tokens/s |")
    print("|---|---|---|---|---|")
    for label, ppl, ratio, tps in rows:
        r = "—" if ratio != ratio else f"{ratio:.2f}× smaller"
        print(f"| {label} | {ppl:.3f} | {100 * (ppl / base_ppl - 1):+.2f}% | {r} | {tps:,.0f} |")
    nf4 = results["NF4 + double quant (block 64)"]
    print()
    print(f"int8 Δppl {100 * (results['int8 (weight-only, per channel)'] / base_ppl - 1):+.2f}% (target <= +1%); "
          f"NF4 Δppl {100 * (nf4 / base_ppl - 1):+.2f}% (target <= +5%); "
          f"GPTQ-vs-RTN int4 ppl {results['GPTQ int4 (group 64)']:.3f} vs {results['RTN int4 (group 64)']:.3f}")
    if bnb_ppl is not None:
        print(f"nf4 ppl ours/bitsandbytes = {nf4 / bnb_ppl:.4f}")
    else:
        print(f"nf4 ppl ours/fp32 = {nf4 / base_ppl:.4f}")


if __name__ == "__main__":
    main()
