"""A `parallel:` section of the training config on a 2-D mesh: FSDP x TP (dp=2, tp=2, 4 gloo
processes) trains through the Trainer with the same loss over 20 steps as one process with
2 accumulated micro-batches (fp32), Llama- and Qwen3-shaped."""

from __future__ import annotations

import os

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

from gloo_ranks import spawn_ranks

SHAPES = {
    "llama": dict(model_type="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64),
    "qwen3": dict(model_type="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                  qk_norm="head", qkv_bias=False),
}
STEPS = 20


def _model(shape: str) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**SHAPES[shape], dropout=0.0))


def _rows():
    """One row per micro-batch: 2 per step (one per dp rank, or both accumulated in one process)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (8, 1, 16), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _config(out_dir: str, **kw) -> TrainConfig:
    return TrainConfig(max_steps=STEPS, lr=1e-2, schedule="constant", precision="fp32", progress=False,
                       max_grad_norm=1.0, out_dir=out_dir, compile=False, **kw)


def _worker(rank: int, world: int, port: int, queue, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    result = {}
    for shape in SHAPES:
        trainer = Trainer(_model(shape), _config(f"{out_dir}/{shape}", parallel={"dp": 2, "tp": 2, "fsdp": True}),
                          _rows())
        result[shape] = (trainer.strategy, [r["loss"] for r in trainer.train()])
    queue.put((rank, result))
    from lmkit.train.distributed import cleanup

    cleanup()


@pytest.mark.slow
def test_fsdp_x_tp_2x2_loss_curve_equals_one_process(tmp_path):
    results = spawn_ranks(_worker, 4, str(tmp_path))
    for shape in SHAPES:
        single = Trainer(_model(shape), _config(str(tmp_path / f"single-{shape}"), grad_accum_steps=2), _rows())
        ref = [r["loss"] for r in single.train()]
        assert ref[-1] < ref[0] - 0.1
        for rank in range(4):
            strategy, got = results[rank][shape]
            assert strategy == "fsdp+tp"
            assert max(abs(a - b) for a, b in zip(ref, got)) < 1e-5, (shape, rank)
