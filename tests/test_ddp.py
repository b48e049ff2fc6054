"""Data parallelism: 2 processes (gloo, CPU) reach the same parameters as 1 process with
gradient accumulation over the same global batch — with DDP and with FSDP (fully_shard),
each run stopped after 2 steps and resumed from its checkpoint for the last one. Tensor
parallelism (strategy "tp"): the 2 processes split every layer and read the same batches,
accumulating 2 per step like the single process. Pipeline parallelism (strategy "pp"): each
process holds one layer, the 2 accumulated batches become the schedule's micro-batches.

The test launches this file under torchrun (`python -m torch.distributed.run`); run as a
script it is the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.train import TrainConfig, Trainer, set_seed
from lmkit.train.distributed import ShardedIterable

VOCAB = 64
STEPS = 3
STRATEGIES = ("ddp", "fsdp", "tp", "pp")


def tiny_model() -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    set_seed(0)
    return DecoderLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))


class Batches:
    """Batch i has its own number of real tokens, so token weighting across ranks matters."""

    def __init__(self, n: int = 2 * STEPS) -> None:
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, VOCAB, (n, 2, 12), generator=g)
        self.pos = 0

    def __iter__(self):
        while self.pos < len(self.ids):
            i = self.pos
            self.pos += 1
            labels = self.ids[i].clone()
            labels[:, 4 + 3 * (i % 3):] = -100
            yield {"input_ids": self.ids[i], "labels": labels}
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def config(out_dir, strategy: str, grad_accum: int) -> TrainConfig:
    return TrainConfig(
        max_steps=STEPS, lr=1e-3, weight_decay=0.1, grad_accum_steps=grad_accum, strategy=strategy,
        out_dir=str(out_dir), progress=False, schedule="constant", max_grad_norm=1.0,
    )


def worker(out: str) -> None:
    """Runs on every rank: DDP then FSDP training; rank 0 saves checkpoints and losses."""
    results = {}
    for strategy in STRATEGIES:
        accum = 2 if strategy in ("tp", "pp") else 1
        # stop after 2 steps (checkpoint), resume in a fresh Trainer for the last one
        tr = Trainer(tiny_model(), config(Path(out) / strategy, strategy, accum), Batches())
        assert tr.strategy == strategy and tr.dist.world_size == 2
        first = tr.train(until=STEPS - 1)
        tr = Trainer(tiny_model(), config(Path(out) / strategy, strategy, accum), Batches(), resume=True)
        assert tr.step == STEPS - 1
        results[strategy] = [r["loss"] for r in first + tr.train()]
        whole = tr.full_model()  # what `lmkit pretrain` exports: whole on rank 0 whatever the layout
        if tr.dist.is_main:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in whole.state_dict().items()}, str(Path(out) / strategy / "whole.safetensors"))
    if tr.dist.is_main:
        (Path(out) / "losses.json").write_text(json.dumps(results))
    from lmkit.train.distributed import cleanup

    cleanup()


def test_sharded_iterable_splits_and_resumes():
    src = Batches(n=6)
    shards = [list(ShardedIterable(Batches(n=6), r, 2)) for r in range(2)]
    full = list(src)
    assert [torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(shards[0], full[0::2])] == [True] * 3
    assert [torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(shards[1], full[1::2])] == [True] * 3
    # after each yielded batch the source position is the same on every rank
    positions = []
    for r in range(2):
        s = ShardedIterable(Batches(n=6), r, 2)
        it = iter(s)
        next(it)
        positions.append(s.state_dict())
    assert positions[0] == positions[1] == {"pos": 2}


def test_two_processes_match_one_process_with_accumulation(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch was built without gloo")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).resolve()), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dist_losses = json.loads((tmp_path / "losses.json").read_text())

    from safetensors.torch import load_file

    single = Trainer(tiny_model(), config(tmp_path / "single", "none", 2), Batches())
    single_losses = [r["loss"] for r in single.train()]
    reference = single.raw_model.state_dict()
    for strategy in STRATEGIES:
        assert dist_losses[strategy] == pytest.approx(single_losses, rel=1e-5), strategy
        got = load_file(tmp_path / strategy / f"checkpoint-{STEPS}" / "model.safetensors")
        assert set(got) == set(reference)
        whole = load_file(tmp_path / strategy / "whole.safetensors")
        assert all(torch.equal(whole[name], got[name]) for name in reference), strategy
        # TP sums each layer's partial products in another order; Adam divides a gradient by its own
        # size, so an element whose gradient is ~0 can move by lr x (rounding ratio): ~4e-6 here.
        atol = 2e-5 if strategy in ("tp", "pp") else 1e-6
        for name, p in reference.items():
            torch.testing.assert_close(got[name], p, rtol=1e-5, atol=atol, msg=f"{strategy}: {name}")
    # the parameters really moved (the comparison is not vacuous)
    init = tiny_model().state_dict()
    assert not torch.allclose(init["layers.0.mlp.up_proj.weight"], reference["layers.0.mlp.up_proj.weight"])


if __name__ == "__main__":
    worker(sys.argv[1])
