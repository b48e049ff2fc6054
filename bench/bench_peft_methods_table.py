"""PEFT methods on one shared task: trainable parameters, % of total, held-out metric, train time.

LM task: counting modulo 16 (x_{t+1} = x_t + 1 mod 16) in a 64-token vocabulary, on a tiny
random-initialised decoder (d_model 64, 4 layers; initializer_range 0.2 so a frozen head can
express confident predictions). Held-out metric: next-token loss and accuracy on fresh
sequences. Classification task (probe, P-tuning v2 + head): which vocabulary half most
tokens come from, on a tiny post-norm encoder; metric: held-out accuracy.
Every method trains with lmkit's Trainer, AdamW, constant lr, the same steps and batches.
Peer: full fine-tuning of the same model. Last line: best PEFT held-out next-token accuracy /
full fine-tuning's.

    OMP_NUM_THREADS=1 python3 bench/bench_peft_methods_table.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lmkit.models.config import ModelConfig  # noqa: E402
from lmkit.models.decoder import DecoderLM  # noqa: E402
from lmkit.models.encoder import EncoderLM  # noqa: E402
from lmkit.peft.method_common import count_total, count_trainable  # noqa: E402
from lmkit.peft.registry import METHODS  # noqa: E402
from lmkit.train.config import TrainConfig  # noqa: E402
from lmkit.train.trainer import Trainer  # noqa: E402

V, T = 64, 24


def decoder() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=V, d_model=64, n_layers=4, n_heads=4, d_ff=128, max_seq_len=128,
                                 initializer_range=0.2))


def encoder() -> EncoderLM:
    torch.manual_seed(0)
    return EncoderLM(ModelConfig(arch="encoder", vocab_size=V, d_model=64, n_layers=4, n_heads=4, d_ff=128,
                                 max_seq_len=128, norm="layernorm", norm_position="post", activation="gelu",
                                 gated_ffn=False, position="learned", qkv_bias=True, o_bias=True, ffn_bias=True,
                                 initializer_range=0.2), heads=("pooler",))


def counting(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 16, (n, 1), generator=g) + torch.arange(T)[None]) % 16


def classification(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    low, high = torch.randint(1, V // 2, (n, 16), generator=g), torch.randint(V // 2, V, (n, 16), generator=g)
    own = torch.rand(n, 16, generator=g) < 0.7
    ids = torch.where(torch.where(labels[:, None].bool(), own, ~own), high, low)
    return ids, torch.ones_like(ids), labels


def train(model, batches, lr, steps, shift=True) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(lr=lr, max_steps=steps, schedule="constant", out_dir=d, progress=False, device="cpu",
                          log_every=10**6, shift_labels=shift, save_every=0)
        tr = Trainer(model, cfg, batches)
        t0 = time.perf_counter()
        stream = tr._batches()
        for _ in range(steps):  # the Trainer's step without its final checkpoint write
            tr.train_step([next(stream)])
        return time.perf_counter() - t0


@torch.no_grad()
def lm_metrics(model, ids):
    model.eval()
    out = model(ids, labels=ids)
    acc = (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()
    return out.loss.item(), acc


@torch.no_grad()
def cls_acc(model, ids, mask, labels):
    model.eval()
    return (model(ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean().item()


LM = [
    ("full fine-tuning", None, {}, 3e-3),
    ("adapter", "adapter", {"bottleneck": 16}, 1e-2),
    ("adapterdrop (k=2)", "adapterdrop", {"drop_layers": 2}, 1e-2),
    ("prefix (MLP)", "prefix", {"n_virtual_tokens": 8}, 1e-2),
    ("prompt (vocab init)", "prompt", {"n_virtual_tokens": 8}, 3e-2),
    ("ptuning v1 (LSTM)", "ptuning", {"n_virtual_tokens": 8, "encoder": "lstm"}, 1e-2),
    ("ptuning v1 (MLP)", "ptuning", {"n_virtual_tokens": 8, "encoder": "mlp"}, 1e-2),
    ("ptuning v2", "ptuning2", {"n_virtual_tokens": 8}, 3e-2),
    ("bitfit (+zero biases)", "bitfit", {"add_missing_bias": True}, 3e-2),
]
CLS = [
    ("full fine-tuning + head", None, {}, 1e-3),
    ("probe (CLS)", "probe", {"pooling": "cls"}, 3e-2),
    ("probe (mean)", "probe", {"pooling": "mean"}, 3e-2),
    ("ptuning v2 + head", "ptuning2", {"n_virtual_tokens": 8, "num_labels": 2}, 3e-2),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tr, te = counting(2048, 1), counting(256, 2)
    batches = [{"input_ids": tr[i:i + 32], "labels": tr[i:i + 32]} for i in range(0, len(tr), 32)]
    base_loss, base_acc = lm_metrics(decoder(), te)
    print(f"torch {torch.__version__}, {args.steps} steps, batch 32 x {T} tokens, 1 thread")
    print("| method | trainable params | % of total | held-out loss | held-out next-token acc | train time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| frozen base (no training) | 0 | 0 | {base_loss:.3f} | {base_acc:.3f} | - |")
    accs = {}
    for label, name, opts, lr in LM:
        base = decoder()
        if name is None:
            model = base
        else:
            spec = METHODS[name]
            cfg = spec.config_cls(**opts)
            model = spec.apply(base, cfg)
            assert count_trainable(model) == spec.param_count(base.config, cfg)
        n, total = count_trainable(model), count_total(model)
        secs = train(model, batches, lr, args.steps)
        loss, acc = lm_metrics(model, te)
        accs[label] = acc
        print(f"| {label} | {n:,} | {100 * n / total:.2f} | {loss:.3f} | {acc:.3f} | {secs:.1f} |")
    ids, mask, labels = classification(2048, 1)
    t_ids, t_mask, t_labels = classification(512, 2)
    cbatches = [{"input_ids": ids[i:i + 64], "attention_mask": mask[i:i + 64], "labels": labels[i:i + 64]}
                for i in range(0, len(ids), 64)]
    print()
    print("| method (classification) | trainable params | % of total | held-out accuracy | train time (s) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| chance | 0 | 0 | {max(t_labels.float().mean().item(), 1 - t_labels.float().mean().item()):.3f} | - |")
    for label, name, opts, lr in CLS:
        base = encoder()
        if name is None:
            from lmkit.peft.probing import SequenceClassifier

            model = SequenceClassifier(base, 2, "cls")
        else:
            spec = METHODS[name]
            cfg = spec.config_cls(**opts)
            model = spec.apply(base, cfg)
        n, total = count_trainable(model), count_total(model)
        secs = train(model, cbatches, lr, args.steps, shift=False)
        print(f"| {label} | {n:,} | {100 * n / total:.2f} | {cls_acc(model, t_ids, t_mask, t_labels):.3f} | {secs:.1f} |")
    best = max(v for k, v in accs.items() if k != "full fine-tuning")
    print(f"best PEFT held-out accuracy / full fine-tuning's (ours/peer): {best / accs['full fine-tuning']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
