"""Full fine-tuning vs LoRA vs QLoRA vs AdaLoRA on one small SFT task, plus LoRA with the peer
(transformers + peft) on the same base, data and batches.

Each method runs in its own process; peak memory is the process's peak RSS during training
(VmHWM reset when training starts, Python + torch baseline included, same for every lmkit row). Prints a Markdown table (method, trainable params, % of total, peak RSS in training,
weights+grads+optimizer bytes, s/step, held-out loss) and, last, ours/peer = lmkit LoRA
seconds per step / peft LoRA seconds per step.

    flock /tmp/lmkit-bench.lock python3 bench/bench_peft_methods.py --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loaders(task_dir: Path, batch: int, seq_len: int, pack: bool = True):
    from lmkit.data.sft import load_sft_examples, sft_loader
    from lmkit.tokenizers.loading import load_tokenizer

    tok = load_tokenizer(task_dir)
    tr = load_sft_examples(task_dir / "train.jsonl", tok, "chatml")
    ev = load_sft_examples(task_dir / "eval.jsonl", tok, "chatml")
    return tok, sft_loader(tr, batch, pack=pack, seq_len=seq_len, seed=0), \
        sft_loader(ev, 16, pack=pack, seq_len=seq_len, shuffle=False)


def worker(method: str, task_dir: Path, steps: int, lr: float, r: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from lmkit.hub import load_pretrained

    # a soft prompt / prefix belongs to one sequence: those methods get padded rows (as `lmkit finetune` does)
    tok, train, held = loaders(task_dir, 8, 128, pack=method not in ("prefix", "prompt", "ptuning", "ptuning2"))
    targets = ("all-linear",)
    if method == "peft-lora":
        import peft
        import transformers

        from lmkit.peft.finetune import evaluate_loss

        model = transformers.LlamaForCausalLM.from_pretrained(task_dir)
        before = rss()
        pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"))
        from lmkit.peft.finetune import _proc_status, _reset_peak_rss

        hwm = _reset_peak_rss()
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        pm.train()
        it = iter(train)
        t0 = time.perf_counter()
        for _ in range(steps):
            try:
                b = next(it)
            except StopIteration:
                it = iter(train)
                b = next(it)
            # peft/transformers have no packed-row mask argument: same tokens, labels; causal only
            loss = pm(input_ids=b["input_ids"], labels=b["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        sec = time.perf_counter() - t0
        peak_train = _proc_status("VmHWM") if hwm else None

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, labels=None, document_ids=None, **kw):
                return self.m(input_ids=input_ids)

        held_loss = evaluate_loss(Wrap(pm), held, "cpu")
        trainable = sum(p.numel() for p in params)
        total = sum(p.numel() for p in pm.parameters())
        peak = peak_train if peak_train is not None else rss() - before
        return {"method": "peft LoRA (peer)", "trainable_params": trainable, "total_params": total,
                "trainable_pct": 100 * trainable / total, "peak_rss_growth": peak,
                "state_bytes": None, "s_per_step": sec / steps, "eval_loss": held_loss, "base_eval_loss": None}

    from lmkit.peft.adalora import AdaLoraConfig
    from lmkit.peft.finetune import run_finetune
    from lmkit.peft.lora import LoraConfig
    from lmkit.peft.qlora import QLoraConfig
    from lmkit.train.config import TrainConfig

    model = load_pretrained(task_dir)
    from lmkit.peft.bitfit import BitFitConfig

    cfg = {
        "bitfit": BitFitConfig(add_missing_bias=True),  # the Llama-style base has no biases to tune
        "adapter": None, "adapterdrop": None, "prefix": None, "prompt": None, "ptuning": None, "ptuning2": None,
        "full": None,
        "lora": LoraConfig(r=r, alpha=2 * r, target_modules=targets),
        "qlora": QLoraConfig(r=r, alpha=2 * r, target_modules=targets),
        "adalora": AdaLoraConfig(init_r=int(1.5 * r), target_r=r, alpha=2 * r, target_modules=targets,
                                 tinit=steps // 10, tfinal=steps // 5, deltaT=5),
    }[method]
    before = rss()
    with tempfile.TemporaryDirectory() as tmp:
        # full fine-tuning moves every weight: lr / 5; AdaLoRA starts from Λ = 0 with small P, Q: lr * 3
        method_lr = {"full": lr / 5, "adalora": lr * 3}.get(method, lr)
        tc = TrainConfig(max_steps=steps, lr=method_lr, warmup_steps=3, out_dir=tmp,
                         progress=False, device="cpu", eval_steps=0, save_every=0)
        rep = run_finetune(method, model, tok, train, held, cfg, tc)
    return {"method": method, "trainable_params": rep.trainable_params, "total_params": rep.total_params,
            "trainable_pct": rep.trainable_pct, "peak_rss_growth": rep.peak_memory_bytes, "state_bytes": rep.state_bytes,
            "s_per_step": rep.seconds / rep.steps, "eval_loss": rep.eval_loss, "base_eval_loss": rep.base_eval_loss,
            "base_unchanged": rep.base_unchanged, "bytes_per_weight": rep.extra.get("bytes_per_weight"),
            "adalora_ranks": rep.extra.get("adalora_ranks")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--methods", default="full,lora,qlora,adalora,peft-lora")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--task-dir", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.task_dir), args.steps, args.lr, args.r)))
        return

    from lmkit.data.sft import toy_sft_rows
    from lmkit.hub import save_pretrained
    from lmkit.peft.finetune import toy_task

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        task = toy_task(seed=0, pretrain_steps=150, d_model=args.d_model)
        save_pretrained(task.base, d)
        task.tokenizer.save_hf_json(d / "tokenizer.json")
        (d / "train.jsonl").write_text("\n".join(json.dumps(x) for x in toy_sft_rows(256, 0)) + "\n")
        (d / "eval.jsonl").write_text("\n".join(json.dumps(x) for x in toy_sft_rows(64, 1000)) + "\n")
        rows = []
        for m in args.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--worker", m, "--task-dir", str(d), "--steps",
                                  str(args.steps), "--lr", str(args.lr), "--r", str(args.r)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{m}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    import peft
    import torch
    import transformers

    base = next((x["base_eval_loss"] for x in rows if x["base_eval_loss"] is not None), None)
    print(f"task: toy SFT (opposites/counting, ChatML), tiny Llama d_model={args.d_model}, 2 layers; "
          f"{args.steps} steps, batch 8 packed rows of 128; frozen-base held-out loss {base:.4f}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print("| method | trainable params | % of total | peak RSS in training | weights+grads+Adam state | s/step | held-out loss |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        sb = "n/a" if x["state_bytes"] is None else f"{x['state_bytes'] / 2**20:.2f} MiB"
        print(f"| {x['method']} | {x['trainable_params']:,} | {x['trainable_pct']:.2f}% | "
              f"{x['peak_rss_growth'] / 2**20:.1f} MiB | {sb} | {x['s_per_step']:.4f} | {x['eval_loss']:.4f} |")
    for x in rows:
        if x.get("bytes_per_weight"):
            print(f"QLoRA NF4 storage: {x['bytes_per_weight']:.4f} bytes/weight (fp32: 4)")
        if x.get("adalora_ranks"):
            print(f"AdaLoRA final ranks: {x['adalora_ranks']}")
    ours = next(x for x in rows if x["method"] == "lora")
    peer = next((x for x in rows if x["method"].startswith("peft")), None)
    if peer:
        print(f"ours/peer (LoRA s/step, lmkit / transformers+peft) = {ours['s_per_step'] / peer['s_per_step']:.3f}")


if __name__ == "__main__":
    main()
