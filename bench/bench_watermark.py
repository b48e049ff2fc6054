"""The green-list watermark on a model trained here: detection AUC, perplexity cost, robustness.

1. The quickstart model (`lmkit quickstart`: BPE 2048 + a small Llama trained on Python's
   documentation; trained into --model when that folder has no model yet).
2. 200 prompts (16-token windows of held_out.txt, text it did not train on), each continued
   by 120 sampled tokens (temperature 1, EOS forbidden: min_new_tokens) with and without the
   watermark (lefthash, gamma 0.25, delta --delta; same seeds).
3. Detection: z-scores of the continuations (prompt left out); ROC AUC watermarked vs plain,
   and the rates above z = 4.
4. Perplexity cost: the perplexity of each continuation under the model itself (no
   watermark), watermarked / plain.
5. Robustness: 0-30 % of the continuation's tokens deleted at random, AUC and the rate above
   z = 4 again (both sets edited the same way).
6. Peer: transformers' WatermarkDetector scores the same token ids; its z-scores must equal
   ours (the last line prints mean z ours / transformers).

    OMP_NUM_THREADS=1 python3 bench/bench_watermark.py [--model DIR] [--delta 2.0]
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.infer import generate  # noqa: E402
from lmkit.infer.watermark import WatermarkConfig  # noqa: E402
from lmkit.infer.watermark_detect import WatermarkDetector  # noqa: E402
from lmkit.tokenizers.loading import load_tokenizer  # noqa: E402


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC AUC = P(a random positive scores above a random negative), ties count half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def prompts_from(text: str, tok, n: int, length: int, seed: int) -> list[list[int]]:
    ids = tok.encode(text)
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(0, len(ids) - length), n))
    return [ids[s:s + length] for s in starts]


@torch.inference_mode()
def continuation_ppl(model, prompt: list[int], cont: list[int]) -> float:
    ids = torch.tensor([prompt + cont])
    logits = model(ids).logits
    lsm = torch.log_softmax(logits[0, len(prompt) - 1:-1].float(), -1)
    nll = -lsm.gather(1, torch.tensor(cont)[:, None]).mean()
    return math.exp(float(nll))


def delete_fraction(seq: list[int], frac: float, rng: random.Random) -> list[int]:
    k = int(round(len(seq) * frac))
    drop = set(rng.sample(range(len(seq)), k))
    return [t for i, t in enumerate(seq) if i not in drop]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/bench_watermark_quickstart")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=120)
    ap.add_argument("--delta", type=float, default=2.0)
    ap.add_argument("--gamma", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()

    out = Path(args.model)
    if not (out / "model" / "config.json").exists():
        from lmkit.train.quickstart import run_quickstart

        run_quickstart(str(out), steps=800, vocab_size=2048, seed=0, report=print)
    model = load_pretrained(out / "model").eval()
    tok = load_tokenizer(out / "model")
    prompts = prompts_from((out / "held_out.txt").read_text(encoding="utf-8"), tok, args.n, 16, seed=0)
    wm = WatermarkConfig(gamma=args.gamma, delta=args.delta)

    def run(watermark):
        seqs, t0 = [], time.perf_counter()
        for i in range(0, len(prompts), args.batch):
            o = generate(model, prompts[i:i + args.batch], max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, seed=1000 + i,
                         watermark=watermark)
            seqs += [list(s) for s in o.sequences]
        return seqs, time.perf_counter() - t0

    marked, t_marked = run(wm)
    plain, t_plain = run(None)
    assert min(map(len, marked + plain)) >= 100
    det = WatermarkDetector(wm, model.config.vocab_size)
    z_m = [det.score(s).z_score for s in marked]
    z_p = [det.score(s).z_score for s in plain]

    ppl_m = [continuation_ppl(model, p, s) for p, s in zip(prompts, marked)]
    ppl_p = [continuation_ppl(model, p, s) for p, s in zip(prompts, plain)]
    gmean = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731

    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: quickstart ({sum(p.numel() for p in model.parameters()):,} parameters, vocab "
          f"{model.config.vocab_size}); {len(prompts)} prompts x {args.new_tokens} sampled tokens (temperature 1)")
    print(f"watermark: lefthash, gamma {args.gamma}, delta {args.delta}; generation {t_marked:.1f} s watermarked, "
          f"{t_plain:.1f} s plain")
    print(f"mean z: watermarked {sum(z_m) / len(z_m):.2f}, plain {sum(z_p) / len(z_p):.2f}")
    print(f"AUC {auc(z_m, z_p):.4f}; z > 4: {sum(z > 4 for z in z_m) / len(z_m):.1%} of watermarked, "
          f"{sum(z > 4 for z in z_p) / len(z_p):.1%} of plain")
    print(f"perplexity (model's own, geometric mean): watermarked {gmean(ppl_m):.2f}, plain {gmean(ppl_p):.2f}, "
          f"cost x{gmean(ppl_m) / gmean(ppl_p):.3f}")
    print("deleted  AUC     mean z (watermarked)  z>4 (watermarked)  z>4 (plain)")
    for frac in (0.0, 0.05, 0.10, 0.15, 0.20, 0.30):
        rng = random.Random(7)
        zm = [det.score(delete_fraction(s, frac, rng)).z_score for s in marked]
        zp = [det.score(delete_fraction(s, frac, rng)).z_score for s in plain]
        print(f"{frac:6.0%}   {auc(zm, zp):.4f}  {sum(zm) / len(zm):20.2f}  {sum(z > 4 for z in zm) / len(zm):17.1%}  "
              f"{sum(z > 4 for z in zp) / len(zp):11.1%}")

    import transformers

    class _Cfg:
        bos_token_id, is_encoder_decoder, vocab_size = -1, False, model.config.vocab_size  # no BOS to strip

    hf = transformers.WatermarkDetector(_Cfg(), "cpu", wm.to_hf())
    t0 = time.perf_counter()
    z_hf = [float(hf(torch.tensor([s]), return_dict=True).z_score[0]) for s in marked]
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh = WatermarkDetector(wm, model.config.vocab_size)
    z_ours = [fresh.score(s).z_score for s in marked]
    t_ours = time.perf_counter() - t0
    worst = max(abs(a - b) for a, b in zip(z_ours, z_hf))
    print(f"transformers WatermarkDetector on the same ids: max |z ours - z transformers| = {worst:.2e}; "
          f"detection time ours {t_ours:.2f} s, transformers {t_hf:.2f} s")
    print(f"mean z ours/transformers: {(sum(z_ours) / len(z_ours)) / (sum(z_hf) / len(z_hf)):.4f}")


if __name__ == "__main__":
    main()
