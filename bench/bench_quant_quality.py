"""Quality of the fused-kernel quantizations: held-out perplexity vs fp32 on a quickstart model.

The model is the one `lmkit quickstart` trains (a Llama-style model on Python's documentation);
without --model the script runs the quickstart pipeline into --out first (a few minutes on 2
cores). Perplexity is measured on the quickstart's held_out.txt (text the model never trained
on), through the quantized layers themselves (fused int8/int4 kernels, bf16 activations; w8a8: int8):

    int8         weight-only int8 per output channel            target <= +0.5 % vs fp32
    w8a8         the same int8 weights, activations int8 per token at run time (int8 x int8
                 products, the fastest int8 on CPU)               target <= +0.5 % vs fp32
    int4 (RTN)   round-to-nearest 4-bit, group 32               (for reference)
    int4 GPTQ    GPTQ 4-bit, group 32, calibrated on corpus.txt  target <= +3 % vs fp32

lm_head stays in floating point (quantize_model's default, and `lmkit quantize`'s).
Last line: `ours/peer <int4 GPTQ perplexity / fp32 perplexity>` (the peer is the fp32 model).

    python3 bench/bench_quant_quality.py [--model DIR [--held-out FILE] [--calib FILE]] [--out DIR] [--steps 1200]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch


def ensure_model(args) -> tuple[Path, Path, Path]:
    """(model dir, held-out text, calibration text)."""
    if args.model:
        model = Path(args.model)
        held = Path(args.held_out) if args.held_out else model.parent / "held_out.txt"
        calib = Path(args.calib) if args.calib else model.parent / "corpus.txt"
        return model, held, calib
    from lmkit.train.quickstart import run_quickstart

    out = Path(args.out)
    if not (out / "model" / "config.json").exists():
        t = time.perf_counter()
        run_quickstart(out, steps=args.steps, report=print)
        print(f"quickstart trained in {time.perf_counter() - t:.0f} s")
    return out / "model", out / "held_out.txt", out / "corpus.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a quickstart model directory (default: train one into --out)")
    ap.add_argument("--held-out", default=None, help="held-out text (default: held_out.txt beside the model)")
    ap.add_argument("--calib", default=None, help="GPTQ calibration text (default: corpus.txt beside the model)")
    ap.add_argument("--out", default="runs/bench_quant_quality", help="where the quickstart writes")
    ap.add_argument("--steps", type=int, default=1200, help="quickstart training steps")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lmkit.eval.perplexity import perplexity
    from lmkit.hub import load_pretrained
    from lmkit.quant.quantize_model import quantize_model
    from lmkit.tokenizers.loading import load_tokenizer

    model_dir, held, calib_path = ensure_model(args)
    model = load_pretrained(model_dir, dtype=torch.float32).eval()
    tok = load_tokenizer(model_dir)
    seq = min(256, model.config.max_seq_len)
    ids = tok.encode(held.read_text(encoding="utf-8"))
    calib_ids = tok.encode(calib_path.read_text(encoding="utf-8")[: args.calib_samples * seq * 8])
    n = min(args.calib_samples, len(calib_ids) // seq)
    calib = torch.tensor(calib_ids[: n * seq]).reshape(n, seq)
    print(f"model {model_dir}: {sum(p.numel() for p in model.parameters()):,} parameters; held-out {held}: "
          f"{len(ids):,} tokens; GPTQ calibration: {n} x {seq} tokens of {calib_path.name}")

    def ppl(m) -> float:
        with torch.inference_mode():
            return perplexity(m, ids, max_length=seq).perplexity

    g = args.group_size
    base = ppl(model)
    rows = [("fp32", base, None)]
    variants = [
        ("int8", lambda m: quantize_model(m, "int8"), 0.5),
        ("w8a8", lambda m: quantize_model(m, "w8a8"), 0.5),
        (f"int4 RTN g{g}", lambda m: quantize_model(m, "int4", group_size=g), None),
        (f"int4 GPTQ g{g}", lambda m: quantize_model(m, "gptq", bits=4, group_size=g, calib=calib), 3.0),
    ]
    for name, make, target in variants:
        t = time.perf_counter()
        q = make(copy.deepcopy(model))
        rows.append((name, ppl(q), target))
        print(f"  {name}: quantized and evaluated in {time.perf_counter() - t:.0f} s", flush=True)
    print(f"{'precision':16s} {'perplexity':>10s} {'vs fp32':>9s}  target")
    for name, p, target in rows:
        delta = 100 * (p / base - 1)
        verdict = "" if target is None else f"<= +{target}%  {'met' if delta <= target else 'MISSED'}"
        print(f"{name:16s} {p:10.3f} {delta:+8.2f}%  {verdict}")
    print(f"ours/peer {rows[-1][1] / base:.4f}")


if __name__ == "__main__":
    main()
