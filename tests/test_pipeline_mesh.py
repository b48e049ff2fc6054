"""Pipeline parallelism combined with data and tensor parallelism, from one `parallel:` section:
pp2 x dp2 (DDP and FSDP inside each stage) and pp2 x tp2 on 4 gloo processes train through the
Trainer with the same loss over 20 steps as one process (fp32), Qwen3-shaped (per-head q/k norms:
the hardest case for TP); the checkpoint each writes holds the whole model and resumes in one
process with the same next-step loss; and the 3-D pp2 x dp2 x tp2 mesh on 8 processes (slow)."""

from __future__ import annotations

import os

import pytest
import torch

from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train import TrainConfig, Trainer

from gloo_ranks import spawn_ranks

SHAPE = dict(model_type="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
             max_seq_len=64, qk_norm="head", qkv_bias=False, tie_embeddings=False)
STEPS = 20
LAYOUTS = {  # name: (parallel section, world size)
    "pp2xdp2": ({"pp": 2, "dp": 2}, 4),
    "pp2xdp2-fsdp": ({"pp": 2, "dp": 2, "fsdp": True}, 4),
    "pp2xtp2": ({"pp": 2, "tp": 2}, 4),
    "pp2xdp2xtp2": ({"pp": 2, "dp": 2, "tp": 2, "fsdp": True}, 8),
}
STRATEGY = {"pp2xdp2": "pp+ddp", "pp2xdp2-fsdp": "pp+fsdp", "pp2xtp2": "pp+tp", "pp2xdp2xtp2": "pp+fsdp+tp"}


def _model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**SHAPE, dropout=0.0))


def _rows():
    """Batches of 2 whole rows; a step takes 2 of them (one per dp rank, or both accumulated)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (8, 2, 16), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _config(out_dir: str, max_steps: int = STEPS, **kw) -> TrainConfig:
    """20 steps, evaluated on 4 held-out batches at steps 10 and 20."""
    return TrainConfig(max_steps=max_steps, lr=5e-3, schedule="constant", precision="fp32", progress=False,
                       max_grad_norm=1.0, out_dir=out_dir, compile=False, eval_every=10, **kw)


def _run(name: str, out_dir: str) -> tuple[str, list[float], bool]:
    parallel, _ = LAYOUTS[name]
    accum = 2 // parallel.get("dp", 1)  # the same 4 rows per step as one process accumulating 2 batches
    trainer = Trainer(_model(), _config(out_dir, parallel=parallel, grad_accum_steps=accum), _rows(), _rows()[:4])
    losses = [r["loss"] for r in trainer.train()] + [r["eval_loss"] for r in trainer.history if "eval_loss" in r]
    full = trainer.full_model()  # collective: gathers the stages (and their shards) on rank 0 (HF export)
    if full is not None:  # a file: the queue's pipe would block on a state dict (the parent reads after join)
        torch.save(full.state_dict(), f"{out_dir}/full_model.pt")
    weights = full is not None
    if name == "pp2xtp2":  # DCP: each rank writes its stage's tp shards
        from lmkit.train.distributed_checkpoint import save_distributed

        save_distributed(f"{out_dir}/dcp", trainer.raw_model, trainer.optimizer, step=STEPS)
    return trainer.strategy, losses, weights


def _worker(rank: int, world: int, port: int, queue, out_dir: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    result = {name: _run(name, f"{out_dir}/{name}") for name in names}
    queue.put((rank, result))
    from lmkit.train.distributed import cleanup

    cleanup()


def _spawn(world: int, out_dir: str, names: list[str]) -> dict:
    return spawn_ranks(_worker, world, out_dir, names)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Trainer:
    trainer = Trainer(_model(), _config(str(tmp_path_factory.mktemp("single")), grad_accum_steps=2), _rows(),
                      _rows()[:4])
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def reference(single) -> list[float]:
    """The step losses, then the two eval losses."""
    return [r["loss"] for r in single.history] + [r["eval_loss"] for r in single.history if "eval_loss" in r]


@pytest.fixture(scope="module")
def mesh4(tmp_path_factory) -> tuple[dict, str]:
    out = str(tmp_path_factory.mktemp("mesh4"))
    return _spawn(4, out, ["pp2xdp2", "pp2xtp2"]), out


@pytest.fixture(scope="module")
def mesh4_fsdp(tmp_path_factory) -> tuple[dict, str]:
    out = str(tmp_path_factory.mktemp("mesh4_fsdp"))
    return _spawn(4, out, ["pp2xdp2-fsdp"]), out


def _check_curve(results: dict, name: str, reference: list[float]) -> None:
    assert reference[STEPS - 1] < reference[0] - 0.1  # it learns, so the curves compare something
    for rank, result in results.items():
        strategy, got, weights = result[name]
        assert strategy == STRATEGY[name] and len(got) == len(reference) == STEPS + 2
        assert weights == (rank == 0)  # Trainer.full_model(): the whole model on rank 0 only
        assert max(abs(a - b) for a, b in zip(reference, got)) < 1e-5, (name, rank)


@pytest.mark.parametrize("name", ["pp2xdp2", "pp2xtp2"])
def test_pp_with_dp_or_tp_loss_curve_equals_one_process(mesh4, reference, name):
    _check_curve(mesh4[0], name, reference)


@pytest.mark.slow
def test_pp_x_fsdp_loss_curve_and_checkpoint_equal_one_process(mesh4_fsdp, reference, single):
    _check_curve(mesh4_fsdp[0], "pp2xdp2-fsdp", reference)
    _check_checkpoint(mesh4_fsdp, "pp2xdp2-fsdp", single)


@pytest.mark.parametrize("name", ["pp2xdp2", "pp2xtp2"])
def test_pp_mesh_checkpoint_holds_the_whole_model_and_optimizer(mesh4, single, name):
    _check_checkpoint(mesh4, name, single)


def _check_checkpoint(results: tuple[dict, str], name: str, single: Trainer) -> None:
    """The layout's final checkpoint (stages gathered, dp / tp shards made whole) equals the
    one-process run's weights and name-keyed optimizer state, and `full_model()` equals it."""
    from lmkit.train import checkpoint as ckpt_io

    ckpt = ckpt_io.latest_checkpoint(f"{results[1]}/{name}")
    assert ckpt is not None and ckpt.name.endswith(str(STEPS))
    weights, want = ckpt_io.read_model_state(ckpt), single.raw_model.state_dict()
    assert set(weights) == set(want)
    assert max(float((weights[k] - want[k]).abs().max()) for k in want) < 1e-4
    full = torch.load(f"{results[1]}/{name}/full_model.pt")
    assert all(torch.equal(full[k], weights[k]) for k in weights)
    optim, want_optim = ckpt_io.read_torch(ckpt, "optimizer.pt"), single._full_optimizer_state()
    assert [sorted(g["params"]) for g in optim["param_groups"]] == [sorted(g["params"]) for g in want_optim["param_groups"]]
    for name_, state in want_optim["state"].items():
        assert float((optim["state"][name_]["exp_avg_sq"] - state["exp_avg_sq"]).abs().max()) < 1e-6


def test_pp_x_tp_distributed_checkpoint_loads_whole_in_one_process(mesh4):
    """A DCP checkpoint written by the pp2 x tp2 stages (each its own layers, as tp shards)
    loads into one whole model with the weights of the Trainer's gathered checkpoint."""
    from lmkit.train import checkpoint as ckpt_io
    from lmkit.train.distributed_checkpoint import load_distributed

    model = _model()
    assert load_distributed(f"{mesh4[1]}/pp2xtp2/dcp", model) == STEPS
    want = ckpt_io.read_model_state(ckpt_io.latest_checkpoint(f"{mesh4[1]}/pp2xtp2"))
    got = model.state_dict()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) == 0.0


def test_pp_x_tp_checkpoint_resumes_in_one_process(mesh4, tmp_path):
    """One process resumes from the pp2 x tp2 checkpoint and takes the same next step as a
    one-process run of STEPS + 1 steps (same data position: no dp sharding to undo)."""
    from lmkit.train import checkpoint as ckpt_io

    ckpt = ckpt_io.latest_checkpoint(f"{mesh4[1]}/pp2xtp2")
    resumed = Trainer(_model(), _config(str(tmp_path / "r"), grad_accum_steps=2, max_steps=STEPS + 1), _rows(),
                      resume=ckpt)
    assert resumed.step == STEPS
    nxt = resumed.train()[-1]["loss"]
    straight = Trainer(_model(), _config(str(tmp_path / "s"), grad_accum_steps=2, max_steps=STEPS + 1), _rows()).train()
    assert abs(nxt - straight[-1]["loss"]) < 1e-5


@pytest.mark.slow
def test_3d_mesh_pp2_dp2_tp2_loss_curve_equals_one_process(reference, single, tmp_path):
    results = _spawn(8, str(tmp_path), ["pp2xdp2xtp2"])
    _check_curve(results, "pp2xdp2xtp2", reference)
    _check_checkpoint((results, str(tmp_path)), "pp2xdp2xtp2", single)
