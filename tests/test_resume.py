"""Checkpoint / resume: a stopped-and-resumed run follows the uninterrupted one bit for bit,
and a crash while saving never damages the previous checkpoint."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lmkit.errors import CheckpointError
from lmkit.models.config import ModelConfig
from lmkit.train import TrainConfig, Trainer, set_seed
from lmkit.train import checkpoint as ckpt_io
from lmkit.train.metrics_log import read_metrics

VOCAB = 64


def tiny_model(seed: int = 0, **kw) -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, dropout=0.1)
    base.update(kw)
    set_seed(seed)
    return DecoderLM(ModelConfig(**base))


class TokenBatches:
    """Resumable: iteration continues from `pos`; the next iter() after the end is a new epoch."""

    def __init__(self, n: int = 6, batch: int = 2, seq: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, batch, seq), generator=g)
        self.pos = 0

    def __iter__(self):
        while self.pos < len(self.ids):
            i = self.pos
            self.pos += 1
            yield {"input_ids": self.ids[i], "labels": self.ids[i]}
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


class PlainBatches(TokenBatches):
    """Not resumable (no state_dict): the Trainer must fast-forward on resume."""

    state_dict = None  # type: ignore[assignment]
    load_state_dict = None  # type: ignore[assignment]

    def __iter__(self):
        for i in range(len(self.ids)):
            yield {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_config(out_dir, **kw) -> TrainConfig:
    base = dict(
        max_steps=8, lr=5e-3, warmup_steps=1, schedule="cosine", weight_decay=0.1, grad_accum_steps=2,
        out_dir=str(out_dir), progress=False, seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def losses(records):
    return [r["loss"] for r in records]


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("data_cls", [TokenBatches, PlainBatches])
def test_resume_is_bitwise_identical(tmp_path, data_cls):
    # 8 steps straight (6 batches per epoch, 2 per step: crosses an epoch boundary)
    straight = Trainer(tiny_model(), make_config(tmp_path / "a"), data_cls())
    full = straight.train()
    # 4 steps, checkpoint, then a fresh model + Trainer resumes for the other 4
    first = Trainer(tiny_model(), make_config(tmp_path / "b"), data_cls())
    part1 = first.train(until=4)
    assert (tmp_path / "b" / "checkpoint-4").is_dir()
    torch.manual_seed(999)  # disturb every RNG: the checkpoint must restore them
    resumed = Trainer(tiny_model(seed=1), make_config(tmp_path / "b"), data_cls(), resume=True)
    assert resumed.step == 4
    part2 = resumed.train()
    assert losses(part1) + losses(part2) == losses(full)  # exact float equality
    assert params_equal(straight.raw_model, resumed.raw_model)
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == list(range(1, 9))


def test_checkpoint_contents(tmp_path):
    tr = Trainer(tiny_model(), make_config(tmp_path, max_steps=2), TokenBatches())
    tr.train()
    ck = tmp_path / "checkpoint-2"
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-2"
    names = {p.name for p in ck.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_rank0.pt", "trainer_state.json"} <= names
    from safetensors.torch import load_file

    weights = load_file(ck / "model.safetensors")
    for name, p in tr.raw_model.state_dict().items():
        assert torch.equal(weights[name], p)
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data_state"] == {"pos": 4}
    rng = torch.load(ck / "rng_state_rank0.pt", weights_only=True)
    assert set(rng) >= {"python", "numpy", "torch"}


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(tiny_model(), make_config(tmp_path, save_every=2, max_steps=4), TokenBatches())
    tr.train(until=2)
    good = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir()}

    real = ckpt_io.CheckpointWriter.write_json

    def crash(self, name, obj):  # dies after model/optimizer files were written
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_io.CheckpointWriter, "write_json", crash)
    with pytest.raises(OSError, match="simulated"):
        tr.train()  # step 4 checkpoint fails half-way
    monkeypatch.setattr(ckpt_io.CheckpointWriter, "write_json", real)
    assert not (tmp_path / "checkpoint-4").exists()
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-2"
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir()} == good
    assert ckpt_io.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    again = Trainer(tiny_model(), make_config(tmp_path, save_every=2, max_steps=4), TokenBatches(), resume=True)
    assert again.step == 2
    again.train()
    assert ckpt_io.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / ".tmp-checkpoint-4").exists()


def test_other_architecture_is_a_clear_error(tmp_path):
    Trainer(tiny_model(), make_config(tmp_path, max_steps=1), TokenBatches()).train()
    with pytest.raises(CheckpointError, match="different architecture.*d_model"):
        Trainer(tiny_model(d_model=48), make_config(tmp_path, max_steps=2), TokenBatches(), resume=True)
    with pytest.raises(CheckpointError, match="n_layers"):
        Trainer(tiny_model(n_layers=1), make_config(tmp_path, max_steps=2), TokenBatches(), resume=True)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Trainer(tiny_model(), make_config(tmp_path), TokenBatches(), resume=str(tmp_path / "nothing"))
    # resume=True with nothing saved yet is a fresh start
    assert Trainer(tiny_model(), make_config(tmp_path), TokenBatches(), resume=True).step == 0
    Trainer(tiny_model(), make_config(tmp_path, max_steps=1), TokenBatches()).train()
    (tmp_path / "checkpoint-1" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        Trainer(tiny_model(), make_config(tmp_path, max_steps=2), TokenBatches(), resume=True)


def test_keep_checkpoints_prunes_old_ones(tmp_path):
    Trainer(tiny_model(), make_config(tmp_path, max_steps=4, save_every=1, keep_checkpoints=2), TokenBatches()).train()
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]


def test_sigint_saves_and_stops_then_resumes_exactly(tmp_path):
    class InterruptAt(TokenBatches):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if self.pos == 5:  # during step 3 (batches 5 and 6)
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

    straight = losses(Trainer(tiny_model(), make_config(tmp_path / "a"), TokenBatches()).train())
    tr = Trainer(tiny_model(), make_config(tmp_path / "b"), InterruptAt())
    part1 = tr.train()
    assert tr.step == 3 and (tmp_path / "b" / "checkpoint-3").is_dir()
    part2 = Trainer(tiny_model(), make_config(tmp_path / "b"), TokenBatches(), resume=True).train()
    assert losses(part1) + losses(part2) == straight


def test_resume_with_the_packed_loader(tmp_path):
    """The data pipeline's shuffled PackedLoader: position saved and restored exactly."""
    import numpy as np

    from lmkit.data.packing import PackedDataset, PackedLoader

    tokens = np.random.default_rng(0).integers(0, VOCAB, size=400)

    def loader():
        return PackedLoader(PackedDataset(tokens, seq_len=12), batch_size=2, shuffle=True, seed=3)

    assert len(loader()) == 18  # 36 windows -> 18 batches per epoch
    cfg = dict(max_steps=12, grad_accum_steps=2)  # 24 batches: the run crosses into epoch 2
    full = Trainer(tiny_model(), make_config(tmp_path / "a", **cfg), loader()).train()
    Trainer(tiny_model(), make_config(tmp_path / "b", **cfg), loader()).train(until=5)
    state = json.loads((tmp_path / "b" / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["data_state"]["sampler"]["index"] == 20
    rest = Trainer(tiny_model(), make_config(tmp_path / "b", **cfg), loader(), resume=True).train()
    assert losses(rest) == losses(full)[5:]
