"""Catastrophic forgetting (灾难性遗忘) in continued pretraining, and what replay, EWC and L2-SP buy.

General corpus: bench/corpus/en.txt (lmkit.corpus.english_text); domain corpus: bench/corpus/zh.txt
(lmkit.corpus.chinese_text, the Chinese LLM notes shipped in src/lmkit/corpus_data/notes). Both
are cut into token shards (90/10 train/validation by paragraph) with one English byte-level BPE.

1. `lmkit pretrain` (run_pretrain) trains a small Llama-style model on English (--base-steps).
2. `lmkit pretrain --init-from` continues it on Chinese, every run from the same checkpoint with
   the same seed, learning rate and re-warmup:
     plain       no remedy, for --steps and for shorter schedules (the trade-off curve of
                 simply training less);
     replay r    a fraction r of the training sequences drawn from the English shards;
     ewc λ       λ/2 Σ F_i (θ_i − θ*_i)², F the diagonal Fisher on 64 English sequences;
     l2sp λ      λ/2 ‖θ − θ*‖².
   Reported per run: Chinese (domain) and English (general) validation perplexity after, and the
   rise of the English perplexity over the starting model's. Then, for each remedy run, the
   English perplexity of plain training *at the same Chinese perplexity* (interpolated on the
   plain curve, in log space): a remedy helps only if it beats that, not merely plain --steps.

    OMP_NUM_THREADS=1 python3 bench/bench_forgetting.py            # ~12 min on a busy 2-core CPU
    OMP_NUM_THREADS=1 python3 bench/bench_forgetting.py --quick

Last line: "general-ppl rise, remedy/plain at equal domain ppl: replay <r1>  ewc <r2>  l2sp <r3>"
(the best run of each; < 1 means the remedy forgets less).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--replay", default="0.1,0.25,0.5")
    ap.add_argument("--ewc", default="1000,10000,100000")
    ap.add_argument("--l2sp", default="0.1,1")
    ap.add_argument("--en-chars", type=int, default=600_000)
    args = ap.parse_args()
    if args.quick:
        args.vocab, args.base_steps, args.steps, args.en_chars = 1024, 100, 40, 200_000
        args.replay, args.ewc, args.l2sp = "0.25", "1000", "1"
    from lmkit.corpus import write_corpora
    from lmkit.data.shards import ShardConfig, prepare_shards
    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.train.pretrain import PretrainConfig, run_pretrain

    corpus = write_corpora(ROOT / "bench" / "corpus")
    en = (corpus / "en.txt").read_text(encoding="utf-8")[: args.en_chars]
    zh = (corpus / "zh.txt").read_text(encoding="utf-8")
    model = dict(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu", gated_ffn=True,
                 position="rope", d_model=args.d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                 d_ff=args.d_model * 8 // 3, max_seq_len=max(args.seq, 64), norm_eps=1e-5, tie_embeddings=False)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "en.txt").write_text(en, encoding="utf-8")
        (d / "zh.txt").write_text(zh, encoding="utf-8")
        tok = BPETokenizer.train([d / "en.txt"], args.vocab, special_tokens=["<|endoftext|>"])
        tok.save(d / "tok.json")
        for name in ("en", "zh"):
            prepare_shards([d / f"{name}.txt"], tok, d / name, ShardConfig(split_by="paragraph", val_fraction=0.1),
                           progress=False)
        common = dict(tokenizer=str(d / "tok.json"), objective="clm", seq_len=args.seq, batch_size=args.batch)
        train = dict(progress=False, eval_steps=0, log_every=1000, precision="fp32", compile=False)
        t0 = time.perf_counter()
        base = run_pretrain(PretrainConfig(data=str(d / "en"), model=model, **common, train={
            **train, "max_steps": args.base_steps, "lr": 3e-3, "warmup_steps": 20, "out_dir": str(d / "base")}))
        print(f"English base: {args.base_steps} steps in {time.perf_counter() - t0:.0f}s, English ppl {base['eval_ppl']:.2f}")

        def cpt(name: str, steps: int, **continual) -> dict:
            t = time.perf_counter()
            r = run_pretrain(PretrainConfig(data=str(d / "zh"), init_from=base["export_dir"], **common,
                                            continual={"general_data": str(d / "en"), **continual},
                                            train={**train, "max_steps": steps, "lr": args.lr,
                                                   "out_dir": str(d / name.replace(" ", "_"))}))
            row = {"name": name, "zh": r["eval_ppl"], "en": r["general_ppl_after"], "en0": r["general_ppl_before"],
                   "zh0": r["domain_ppl_before"]}
            print(f"{name:>14}: zh ppl {row['zh0']:.1f} -> {row['zh']:.2f}   en ppl {row['en0']:.2f} -> {row['en']:.2f} "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
            return row

        plain = [cpt(f"plain {s}", s) for s in sorted({max(args.steps // 3, 1), 2 * args.steps // 3, args.steps})]
        rows = list(plain)
        for r in args.replay.split(","):
            rows.append(cpt(f"replay {r}", args.steps, replay_ratio=float(r)))
        for lam in args.ewc.split(","):
            rows.append(cpt(f"ewc {lam}", args.steps, penalty="ewc", penalty_weight=float(lam)))
        for lam in args.l2sp.split(","):
            rows.append(cpt(f"l2sp {lam}", args.steps, penalty="l2sp", penalty_weight=float(lam)))

    en0 = rows[0]["en0"]
    # plain curve, from the starting model (0 steps): English ppl as a function of Chinese ppl (log-log)
    xs = np.log([rows[0]["zh0"]] + [r["zh"] for r in plain])
    ys = np.log([en0] + [r["en"] for r in plain])
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]

    def plain_en_at(zh: float) -> float:
        return float(np.exp(np.interp(math.log(zh), xs, ys)))  # clamps outside the curve

    print(f"\nstarting model: English ppl {en0:.2f}, Chinese ppl {rows[0]['zh0']:.1f}\n")
    print("| run | Chinese ppl after | English ppl after | English rise | plain at equal Chinese ppl: English rise |")
    print("|---|---:|---:|---:|---:|")
    best: dict[str, float] = {}
    for r in rows:
        ref = plain_en_at(r["zh"]) - en0
        rise = r["en"] - en0
        print(f"| {r['name']} | {r['zh']:.2f} | {r['en']:.2f} | {rise:+.2f} | {ref:+.2f} |")
        kind = r["name"].split()[0]
        if kind != "plain" and ref > 0:
            best[kind] = min(best.get(kind, math.inf), rise / ref)
    print("general-ppl rise, remedy/plain at equal domain ppl: "
          + "  ".join(f"{k} {v:.3f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
