"""Quality of pruning and distillation on a small model trained with lmkit (no peer library:
the figures are perplexities, and the last line is a ratio).

Pruning: a dense Llama-style model is trained on bench/corpus/en.txt, pruned to 50%
(layer-wise magnitude, global magnitude, 2:4, gradual cubic-schedule magnitude; and 70%), then
fine-tuned with the masks held fixed. Reported: held-out perplexity of the dense model,
of the pruned model before fine-tuning, after fine-tuning, and of the dense model trained
for the same extra steps (the fair control: fine-tuning also means more training).

Distillation: the dense model is the teacher; a ~12x smaller student is trained from the same
initialisation on the same batches for the same steps — on hard labels only, and with the
distillation loss for each (T, alpha) of --kd-grid — and the held-out perplexities compared.

    OMP_NUM_THREADS=1 python3 bench/bench_compress_quality.py            # ~10 min on a busy 2-core CPU
    OMP_NUM_THREADS=1 python3 bench/bench_compress_quality.py --quick    # ~2 min

Last line: "pruned+finetuned/dense ppl <r1>  distilled/baseline ppl <r2>".
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build_data(chars: int, vocab: int, seq: int, batch: int, seed: int = 0):
    from lmkit.data.packing import PackedDataset, PackedLoader
    from lmkit.tokenizers import BPETokenizer

    from lmkit.corpus import write_corpora

    text = (write_corpora(ROOT / "bench" / "corpus") / "en.txt").read_text(encoding="utf-8")[:chars]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train.txt"
        p.write_text(text[: int(len(text) * 0.9)], encoding="utf-8")
        tok = BPETokenizer.train([p], vocab_size=vocab, special_tokens=["<|endoftext|>"])
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    cut = int(len(ids) * 0.9)
    train_set, val_set = PackedDataset(ids[:cut], seq), PackedDataset(ids[cut:], seq)

    def train():  # a fresh loader per run: every run sees the same batches in the same order
        return PackedLoader(train_set, batch, shuffle=True, seed=seed)

    val = PackedLoader(val_set, batch, shuffle=False, drop_last=False)
    return tok, train, val


def model(vocab: int, d: int, layers: int, heads: int, ff: int, seed: int):
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset

    torch.manual_seed(seed)
    return DecoderLM(preset("llama-tiny", vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
                            n_kv_heads=heads, d_ff=ff, max_seq_len=256))


def tcfg(out: str, steps: int, lr: float, warmup: int = 0, schedule: str = "cosine", seed: int = 0):
    from lmkit.train import TrainConfig

    return TrainConfig(max_steps=steps, lr=lr, warmup_steps=warmup, schedule=schedule, out_dir=out,
                       progress=False, eval_steps=0, log_every=10_000, seed=seed, min_lr_ratio=0.1,
                       keep_checkpoints=1)


def evaluate(m, val, out):
    from lmkit.train import Trainer

    return Trainer(m, tcfg(out, 1, 1e-3), val, val).evaluate()["eval_ppl"]


def train(m, data, val, out, steps, lr, warmup=0, schedule="cosine"):
    from lmkit.train import Trainer

    tr = Trainer(m, tcfg(out, steps, lr, warmup, schedule), data, val)
    tr.train()
    return tr.evaluate()["eval_ppl"]


def train_dense(args, tok, train_data, val, work):
    m = model(tok.vocab_size, args.d, args.layers, 4, args.ff, seed=0)
    t0 = time.time()
    ppl = train(m, train_data(), val, f"{work}/dense", args.steps, 3e-3, warmup=args.steps // 20)
    return m, ppl, time.time() - t0


def pruning(args, dense, ppl_dense, train_data, val, work):
    from lmkit.compress import PruneSchedule, prune_and_finetune, sparsity_report
    from lmkit.train import TrainConfig

    rows = [("dense", ppl_dense, None, None)]
    ft = args.ft_steps
    # control: the dense model trained ft more steps at the fine-tuning lr
    ctrl = copy.deepcopy(dense)
    rows.append(("dense + the same extra steps", train(ctrl, train_data(), val, f"{work}/ctrl", ft, 1e-3), None, None))
    for name, method, sched in [
        ("magnitude, layer-wise, one-shot", "magnitude", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("magnitude, global, one-shot", "global", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("2:4 structured, one-shot", "2:4", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("magnitude, layer-wise, gradual (cubic, 4 steps)", "magnitude",
         PruneSchedule(0.5, n_prunes=4, prune_every=ft // 8, finetune_steps=ft - 3 * (ft // 8))),
        ("magnitude, layer-wise, 70%, one-shot", "magnitude", PruneSchedule(0.7, n_prunes=1, finetune_steps=ft)),
        ("FFN neurons: half of every FFN's channels removed", "neurons",
         PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
    ]:
        m = copy.deepcopy(dense)
        cfg = TrainConfig(lr=1e-3, out_dir=f"{work}/{method}-{sched.n_prunes}-{sched.final_sparsity}", progress=False,
                          eval_steps=0, log_every=10_000, min_lr_ratio=0.1, keep_checkpoints=1)
        r = prune_and_finetune(m, cfg, train_data(), val, schedule=sched, method=method)
        sp = sparsity_report(m)["sparsity"] if method != "neurons" else None
        rows.append((name, r["finetuned"]["eval_ppl"], r["pruned"]["eval_ppl"], sp))
    return rows


def distillation(args, teacher, ppl_teacher, tok, train_data, val, work):
    from lmkit.compress import distill

    v = tok.vocab_size
    base = model(v, args.student_d, args.student_layers, 2, args.student_ff, seed=2)
    init = copy.deepcopy(base)
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    steps = args.student_steps
    ppl_base = train(base, train_data(), val, f"{work}/student-ce", steps, 3e-3, warmup=steps // 20)
    runs = []
    for item in args.kd_grid.split(","):
        T, alpha = (float(x) for x in item.split(":"))
        kd = copy.deepcopy(init)
        r = distill(teacher, kd, train_data(), val, temperature=T, alpha=alpha,
                    train_config=tcfg(f"{work}/student-kd-{T}-{alpha}", steps, 3e-3, steps // 20))
        runs.append((T, alpha, r["eval_ppl"]))
    return dict(teacher_ppl=ppl_teacher, teacher_params=count(teacher), student_params=count(init),
                baseline_ppl=ppl_base, runs=runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chars", type=int, default=800_000)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ff", type=int, default=344)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--ft-steps", type=int, default=200)
    ap.add_argument("--student-d", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=1)
    ap.add_argument("--student-ff", type=int, default=88)
    ap.add_argument("--student-steps", type=int, default=400)
    ap.add_argument("--kd-grid", default="1:0.5,1:0.9,2:0.5,4:0.5",
                    help="T:alpha settings; the first is the headline (lmkit's defaults)")
    ap.add_argument("--only", choices=["prune", "distill"], default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.chars, a.vocab, a.d, a.ff, a.steps, a.ft_steps, a.student_steps = 300_000, 512, 64, 172, 300, 100, 200
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, args {vars(a)}", flush=True)
    tok, train_data, val = build_data(a.chars, a.vocab, a.seq, a.batch)
    r1 = r2 = float("nan")
    with tempfile.TemporaryDirectory() as work:
        dense, ppl_dense, secs = train_dense(a, tok, train_data, val, work)
        n = sum(p.numel() for p in {id(p): p for p in dense.parameters()}.values())
        print(f"dense model: {n:,} parameters, {a.steps} steps in {secs:.0f} s, held-out ppl {ppl_dense:.2f}", flush=True)
        if a.only in (None, "prune"):
            rows = pruning(a, dense, ppl_dense, train_data, val, work)
            print("\n| model | sparsity (targets) | ppl right after pruning | held-out ppl | ratio to dense |")
            print("|---|---|---|---|---|")
            for name, ppl, pruned, sp in rows:
                print(f"| {name} | {'' if sp is None else f'{sp:.1%}'} | {'' if pruned is None else f'{pruned:.2f}'} "
                      f"| {ppl:.2f} | {ppl / ppl_dense:.3f} |", flush=True)
            r1 = rows[2][1] / ppl_dense
        if a.only in (None, "distill"):
            d = distillation(a, dense, ppl_dense, tok, train_data, val, work)
            print(f"\nteacher (the dense model): {d['teacher_params']:,} parameters, ppl {d['teacher_ppl']:.2f}; "
                  f"student: {d['student_params']:,} parameters, {a.student_steps} steps")
            print("\n| student | T | alpha | held-out ppl | ratio to no-teacher |")
            print("|---|---|---|---|---|")
            print(f"| hard labels only (no teacher) | | | {d['baseline_ppl']:.2f} | 1.000 |")
            for T, alpha, ppl in d["runs"]:
                print(f"| distilled | {T:g} | {alpha:g} | {ppl:.2f} | {ppl / d['baseline_ppl']:.3f} |", flush=True)
            r2 = d["runs"][0][2] / d["baseline_ppl"]
    print(f"pruned+finetuned/dense ppl {r1:.3f}  distilled/baseline ppl {r2:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
