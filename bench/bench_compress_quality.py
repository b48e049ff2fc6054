"""Quality of pruning and distillation on a small model trained with lmkit (no peer library:
the figures are perplexities, and the last line is a ratio).

Pruning: a dense Llama-style model is trained on bench/corpus/en.txt, pruned to 50%
(layer-wise magnitude, global magnitude, 2:4, and gradual cubic-schedule magnitude), then
fine-tuned with the masks held fixed. Reported: held-out perplexity of the dense model,
of the pruned model before fine-tuning, after fine-tuning, and of the dense model trained
for the same extra steps (the fair control: fine-tuning also means more training).

Distillation: a teacher (wider, deeper) is trained; a small student is trained twice from the
same initialisation on the same batches for the same steps — once with the distillation
loss (T, alpha), once on hard labels only — and their held-out perplexities are compared.

    OMP_NUM_THREADS=1 python3 bench/bench_compress_quality.py            # ~ a few minutes
    OMP_NUM_THREADS=1 python3 bench/bench_compress_quality.py --quick    # smaller/faster

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

    text = (ROOT / "bench" / "corpus" / "en.txt").read_text(encoding="utf-8")[:chars]
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


def pruning(args, tok, train_data, val, work):
    from lmkit.compress import PruneSchedule, prune_and_finetune, sparsity_report
    from lmkit.train import TrainConfig

    v = tok.vocab_size
    dense = model(v, args.d, args.layers, 4, args.ff, seed=0)
    t0 = time.time()
    ppl_dense = train(dense, train_data(), val, f"{work}/dense", args.steps, 3e-3, warmup=args.steps // 20)
    rows = [("dense", ppl_dense, None, None, time.time() - t0)]
    ft = args.ft_steps
    # control: the dense model trained ft more steps at the fine-tuning lr
    ctrl = copy.deepcopy(dense)
    rows.append(("dense + same extra steps", train(ctrl, train_data(), val, f"{work}/ctrl", ft, 1e-3), None, None, 0))
    for name, method, sched in [
        ("magnitude, layer-wise, one-shot", "magnitude", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("magnitude, global, one-shot", "global", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("2:4 structured, one-shot", "2:4", PruneSchedule(0.5, n_prunes=1, finetune_steps=ft)),
        ("magnitude, layer-wise, cubic 4 steps", "magnitude",
         PruneSchedule(0.5, n_prunes=4, prune_every=ft // 8, finetune_steps=ft - 3 * (ft // 8))),
    ]:
        m = copy.deepcopy(dense)
        t0 = time.time()
        cfg = TrainConfig(lr=1e-3, out_dir=f"{work}/{method}-{sched.n_prunes}", progress=False, eval_steps=0,
                          log_every=10_000, min_lr_ratio=0.1, keep_checkpoints=1)
        r = prune_and_finetune(m, cfg, train_data(), val, schedule=sched, method=method)
        sp = sparsity_report(m)["sparsity"]
        rows.append((name, r["finetuned"]["eval_ppl"], r["pruned"]["eval_ppl"], sp, time.time() - t0))
    return rows


def distillation(args, tok, train_data, val, work):
    from lmkit.compress import distill

    v = tok.vocab_size
    teacher = model(v, args.teacher_d, args.teacher_layers, 4, args.teacher_ff, seed=1)
    ppl_teacher = train(teacher, train_data(), val, f"{work}/teacher", args.teacher_steps, 3e-3,
                        warmup=args.teacher_steps // 20)
    base = model(v, args.student_d, args.student_layers, 2, args.student_ff, seed=2)
    kd = copy.deepcopy(base)
    n_params = sum(p.numel() for p in base.parameters())
    t_params = sum(p.numel() for p in teacher.parameters())
    ppl_base = train(base, train_data(), val, f"{work}/student-ce", args.student_steps, 3e-3,
                     warmup=args.student_steps // 20)
    r = distill(teacher, kd, train_data(), val, temperature=args.temperature, alpha=args.alpha,
                train_config=tcfg(f"{work}/student-kd", args.student_steps, 3e-3, args.student_steps // 20))
    return dict(teacher_ppl=ppl_teacher, teacher_params=t_params, student_params=n_params,
                baseline_ppl=ppl_base, distilled_ppl=r["eval_ppl"])


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
    ap.add_argument("--teacher-d", type=int, default=128)
    ap.add_argument("--teacher-layers", type=int, default=4)
    ap.add_argument("--teacher-ff", type=int, default=344)
    ap.add_argument("--teacher-steps", type=int, default=800)
    ap.add_argument("--student-d", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=1)
    ap.add_argument("--student-ff", type=int, default=88)
    ap.add_argument("--student-steps", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--only", choices=["prune", "distill"], default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.chars, a.vocab, a.d, a.ff, a.steps, a.ft_steps = 300_000, 512, 64, 172, 300, 100
        a.teacher_d, a.teacher_layers, a.teacher_ff, a.teacher_steps, a.student_steps = 64, 2, 172, 300, 200
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, args {vars(a)}", flush=True)
    tok, train_data, val = build_data(a.chars, a.vocab, a.seq, a.batch)
    r1 = r2 = float("nan")
    with tempfile.TemporaryDirectory() as work:
        if a.only in (None, "prune"):
            rows = pruning(a, tok, train_data, val, work)
            print("\n| model | sparsity (targets) | ppl after pruning, before fine-tuning | held-out ppl | ratio to dense |")
            print("|---|---|---|---|---|")
            dense = rows[0][1]
            for name, ppl, pruned, sp, secs in rows:
                print(f"| {name} | {'' if sp is None else f'{sp:.1%}'} | {'' if pruned is None else f'{pruned:.2f}'} "
                      f"| {ppl:.2f} | {ppl / dense:.3f} |")
            r1 = rows[2][1] / dense
        if a.only in (None, "distill"):
            d = distillation(a, tok, train_data, val, work)
            print("\n" + json.dumps(d, indent=1))
            r2 = d["distilled_ppl"] / d["baseline_ppl"]
    print(f"pruned+finetuned/dense ppl {r1:.3f}  distilled/baseline ppl {r2:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
