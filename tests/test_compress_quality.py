"""Measured on real text (bench/corpus/en.txt, a small BPE tokenizer) with lmkit's Trainer:
  * a trained model pruned to 50% and fine-tuned with the masks recovers to within 5% of the
    dense model's held-out perplexity (one-shot pruning alone is clearly worse);
  * a student distilled from a teacher beats the same student (same init, same batches, same
    steps) trained on the hard labels alone.
The bigger version with all methods is bench/bench_compress_quality.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lmkit.compress import PruneSchedule, distill, prune_and_finetune, sparsity_report
from lmkit.data.packing import PackedDataset, PackedLoader
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.tokenizers import BPETokenizer
from lmkit.train import TrainConfig, Trainer

SEQ, BATCH = 64, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus_dir):
    d = tmp_path_factory.mktemp("compress")
    text = (corpus_dir / "en.txt").read_text(encoding="utf-8")[:200_000]
    (d / "train.txt").write_text(text[:180_000], encoding="utf-8")
    tok = BPETokenizer.train([d / "train.txt"], vocab_size=384, special_tokens=["<|endoftext|>"])
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    cut = int(len(ids) * 0.9)
    train_set, val_set = PackedDataset(ids[:cut], SEQ), PackedDataset(ids[cut:], SEQ)
    return {
        "vocab": tok.vocab_size,
        "train": lambda: PackedLoader(train_set, BATCH, shuffle=True, seed=0),  # same batches every run
        "val": PackedLoader(val_set, BATCH, shuffle=False, drop_last=False),
        "dir": d,
    }


def model(vocab: int, d: int, layers: int, seed: int) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(preset("llama-tiny", vocab_size=vocab, d_model=d, n_layers=layers, n_heads=4, n_kv_heads=4,
                            d_ff=int(d * 2.75), max_seq_len=SEQ))


def cfg(out, steps: int, lr: float) -> TrainConfig:
    return TrainConfig(max_steps=steps, lr=lr, warmup_steps=steps // 20, min_lr_ratio=0.1, out_dir=str(out),
                       progress=False, eval_steps=0, log_every=1000, keep_checkpoints=1)


@pytest.fixture(scope="module")
def dense(data):
    m = model(data["vocab"], 64, 2, seed=0)
    tr = Trainer(m, cfg(data["dir"] / "dense", 300, 3e-3), data["train"](), data["val"])
    tr.train()
    return m, tr.evaluate()["eval_ppl"]


def test_pruning_to_half_then_finetuning_recovers_within_5_percent(data, dense):
    m, ppl_dense = dense
    pruned = copy.deepcopy(m)
    r = prune_and_finetune(pruned, cfg(data["dir"] / "prune", 1, 1e-3), data["train"](), data["val"],
                           schedule=PruneSchedule(0.5, n_prunes=1, finetune_steps=100), method="magnitude")
    assert sparsity_report(pruned)["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert r["dense"]["eval_ppl"] == pytest.approx(ppl_dense, rel=1e-6)
    before, after = r["pruned"]["eval_ppl"], r["finetuned"]["eval_ppl"]
    print(f"dense {ppl_dense:.2f}  pruned 50% {before:.2f}  pruned+finetuned {after:.2f}")
    assert before > ppl_dense * 1.05  # pruning alone costs quality here
    assert after <= ppl_dense * 1.05


def test_distilled_student_beats_the_same_student_without_teacher(data, dense):
    teacher, ppl_teacher = dense
    base = model(data["vocab"], 16, 1, seed=5)
    kd = copy.deepcopy(base)
    tr = Trainer(base, cfg(data["dir"] / "ce", 150, 3e-3), data["train"](), data["val"])
    tr.train()
    ppl_base = tr.evaluate()["eval_ppl"]
    r = distill(teacher, kd, data["train"](), data["val"], train_config=cfg(data["dir"] / "kd", 150, 3e-3),
                temperature=1.0, alpha=0.5)
    print(f"teacher {ppl_teacher:.2f}  student alone {ppl_base:.2f}  distilled {r['eval_ppl']:.2f}")
    assert ppl_teacher < ppl_base
    assert r["eval_ppl"] < ppl_base * 0.97
