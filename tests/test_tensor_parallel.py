"""Tensor parallelism on 2 gloo processes equals one process: the loss over 20 AdamW steps
(plain TP and with sequence parallelism, Llama- and Qwen3-shaped) and greedy generation."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train.distributed_checkpoint import export_hf, load_distributed, save_distributed
from lmkit.train.tensor_parallel import apply_tensor_parallel, check_tensor_parallel, clip_grad_norm, parallel_loss

from gloo_ranks import spawn_ranks

SHAPES = {
    "llama": dict(model_type="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64),
    "qwen3": dict(model_type="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                  qk_norm="head", qkv_bias=False),
}
STEPS = 20
PROMPT = [[1, 5, 9, 3]]


def _model(shape: str) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**SHAPES[shape], dropout=0.0))


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (4, 2, 16), generator=g)[step % 4]


def _optimizer(model: DecoderLM) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)


def _step(model, opt, ids: torch.Tensor, sharded: bool) -> float:
    with parallel_loss(sharded):
        loss = model(ids, labels=ids).loss
        loss.backward()
    clip_grad_norm(list(model.parameters()), 1.0)
    opt.step()
    opt.zero_grad()
    loss = loss.detach()
    return float(loss.full_tensor() if hasattr(loss, "full_tensor") else loss)


def _losses(model: DecoderLM, sharded: bool, steps: int = STEPS, opt=None) -> list[float]:
    opt = opt or _optimizer(model)
    return [_step(model, opt, _batch(step), sharded) for step in range(steps)]


def _greedy(model: DecoderLM) -> list[int]:
    from lmkit.infer.generate import generate

    model.eval()
    return generate(model, torch.tensor(PROMPT), max_new_tokens=10, do_sample=False).sequences[0]


CKPT_DIR: list[str] = []  # set by the fixture before the workers start (spawn pickles the args)


def _worker(rank: int, world: int, port: int, queue, ckpt_dir: str) -> None:
    CKPT_DIR[:] = [ckpt_dir]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    result = {}
    for shape in SHAPES:
        for sp in (False, True):
            result[(shape, sp)] = _losses(apply_tensor_parallel(_model(shape), mesh, sequence_parallel=sp), True)
        result[(shape, "greedy")] = _greedy(apply_tensor_parallel(_model(shape), mesh, gather_logits=True))
    # A checkpoint saved under TP=2 after 5 steps, then the 6th step under TP=2 ...
    model = apply_tensor_parallel(_model("llama"), mesh)
    opt = _optimizer(model)
    _losses(model, True, steps=5, opt=opt)
    save_distributed(CKPT_DIR[0], model, opt, step=5)
    result["tp-step6"] = _step(model, opt, _batch(5), True)
    # ... and resumed under FSDP=2 (each rank half the batch; the loss is their mean).
    from torch.distributed.fsdp import fully_shard

    model = _model("llama")
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = _optimizer(model)
    result["fsdp-resumed-at"] = load_distributed(CKPT_DIR[0], model, opt)
    loss = torch.tensor(_step(model, opt, _batch(5)[rank:rank + 1], False))
    dist.all_reduce(loss)
    result["fsdp-step6"] = float(loss) / world
    queue.put((rank, result))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dcp") / "tp2-step5"


@pytest.fixture(scope="module")
def tp2_results(ckpt_dir):
    return spawn_ranks(_worker, 2, str(ckpt_dir))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tp2_loss_curve_equals_one_process(tp2_results, shape, sequence_parallel):
    ref = _losses(_model(shape), False)
    assert ref[-1] < ref[0] - 0.1  # it learns, so the curves compare something
    for rank in (0, 1):
        got = tp2_results[rank][(shape, sequence_parallel)]
        assert max(abs(a - b) for a, b in zip(ref, got)) < 1e-5


@pytest.mark.parametrize("shape", list(SHAPES))
def test_tp2_greedy_generation_equals_one_process(tp2_results, shape):
    ref = _greedy(_model(shape))
    assert tp2_results[0][(shape, "greedy")] == ref == tp2_results[1][(shape, "greedy")]


@pytest.mark.parametrize(
    "change, field",
    [(dict(n_kv_heads=1), "n_kv_heads"), (dict(vocab_size=63), "vocab_size"), (dict(qk_norm="full"), "qk_norm"),
     (dict(tie_embeddings=True), "tie_embeddings")],
)
def test_shapes_that_do_not_split_are_refused_by_name(change, field):
    cfg = ModelConfig(**{**SHAPES["llama"], **change})
    with pytest.raises(ConfigError, match=field):
        check_tensor_parallel(cfg, 2)


def test_tp2_checkpoint_resumes_in_one_process_and_under_fsdp2(tp2_results, ckpt_dir):
    model = _model("llama")
    opt = _optimizer(model)
    assert load_distributed(ckpt_dir, model, opt) == 5
    single = _step(model, opt, _batch(5), False)
    tp = tp2_results[0]["tp-step6"]
    assert tp2_results[0]["fsdp-resumed-at"] == 5
    assert abs(single - tp) < 1e-5 and abs(tp2_results[0]["fsdp-step6"] - tp) < 1e-5


def test_tp2_checkpoint_exports_to_transformers(tp2_results, ckpt_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_hf(ckpt_dir, _model("llama").config, tmp_path / "hf")
    ours = _model("llama")
    load_distributed(ckpt_dir, ours)
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.allclose(ours.eval()(ids).logits, theirs(ids).logits, atol=1e-5)


def test_not_a_distributed_checkpoint_is_refused(tmp_path):
    from lmkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a distributed checkpoint"):
        load_distributed(tmp_path, _model("llama"))
