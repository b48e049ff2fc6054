"""Pipeline parallelism on 2 gloo processes equals one process: the loss over 20 AdamW steps
with the GPipe and 1F1B schedules (2 micro-batches), Llama- and Qwen3-shaped, one layer per
stage; plus how layers are split and which models are refused, and `lmkit memory`'s per-process
estimate for TP=2 (with and without SP) and PP=2 (GPipe, 1F1B) against the peak measured on
each process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.train.config import ParallelConfig, TrainConfig
from lmkit.train.memory import measure_step_peak
from lmkit.train.parallel_memory import estimate_parallel_memory
from lmkit.train.parallel_plan import pipeline_loss
from lmkit.train.pipeline_parallel import Pipeline, check_pipeline_parallel, clip_grad_norm, stage_layers
from lmkit.train.tensor_parallel import apply_tensor_parallel, parallel_loss

from gloo_ranks import spawn_ranks

SHAPES = {
    "llama": dict(model_type="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64),
    "qwen3": dict(model_type="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                  qk_norm="head", qkv_bias=False),
}
SCHEDULES = ("gpipe", "1f1b")
STEPS = 20


def _model(shape: str) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**SHAPES[shape], dropout=0.0))


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (4, 2, 16), generator=g)[step % 4]


def _reference(shape: str) -> list[float]:
    model = _model(shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = []
    for step in range(STEPS):
        ids = _batch(step)
        loss = model(ids, labels=ids).loss
        loss.backward()
        clip_grad_norm(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad()
        out.append(float(loss.detach()))
    return out


def _pipelined(shape: str, schedule: str) -> list[float]:
    denominator = [1.0]
    pipe = Pipeline(_model(shape), None, 2, schedule, loss_fn=pipeline_loss(0.0, True, denominator))
    opt = torch.optim.AdamW(pipe.module.parameters(), lr=1e-2)
    out = []
    for step in range(STEPS):
        ids = _batch(step)
        denominator[0] = float(ids[:, 1:].numel())
        losses = pipe.step(ids, ids)
        clip_grad_norm(list(pipe.module.parameters()), 1.0)
        opt.step()
        opt.zero_grad()
        total = torch.tensor([sum(float(loss.detach()) for loss in losses)], dtype=torch.float64)
        dist.all_reduce(total)  # only the last stage has the losses
        out.append(float(total))
    return out


# memory: big enough that the activations and the vocabulary matter, small enough for a test
MEM = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128, dropout=0.0)
MEM_BATCH, MEM_SEQ, MEM_MICRO = 8, 128, 4


def _measure_memory(world: int) -> dict:
    """This process's measured peak of one AdamW step (fp32) under TP=2 (+SP) and PP=2."""
    from torch.distributed.device_mesh import init_device_mesh

    ids = torch.randint(0, MEM["vocab_size"], (MEM_BATCH, MEM_SEQ), generator=torch.Generator().manual_seed(0))
    out = {}
    for sp in (False, True):
        torch.manual_seed(0)
        model = apply_tensor_parallel(DecoderLM(ModelConfig(**MEM)), init_device_mesh("cpu", (world,)), sequence_parallel=sp)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)

        def tp_step():
            with parallel_loss():
                model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[("tp", sp)] = measure_step_peak(tp_step, list(model.parameters()), opt)
    for schedule in SCHEDULES:
        torch.manual_seed(0)
        pipe = Pipeline(DecoderLM(ModelConfig(**MEM)), None, MEM_MICRO, schedule,
                        loss_fn=pipeline_loss(0.0, True, [float(ids[:, 1:].numel())]))
        opt = torch.optim.AdamW(pipe.module.parameters(), lr=1e-3, foreach=False)

        def pp_step():
            pipe.step(ids, ids)
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[("pp", schedule)] = measure_step_peak(pp_step, list(pipe.module.parameters()), opt)
    return out


def _worker(rank: int, world: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {(shape, schedule): _pipelined(shape, schedule) for shape in SHAPES for schedule in SCHEDULES}
    # each stage holds its own layers under their whole-model names
    result["names"] = sorted(name for name, _ in Pipeline(_model("llama"), None, 2).module.named_parameters())
    result["memory"] = _measure_memory(world)
    queue.put((rank, result))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def pp2_results():
    return spawn_ranks(_worker, 2)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_pp2_loss_curve_equals_one_process(pp2_results, shape, schedule):
    ref = _reference(shape)
    assert ref[-1] < ref[0] - 0.1  # it learns, so the curves compare something
    for rank in (0, 1):
        got = pp2_results[rank][(shape, schedule)]
        assert max(abs(a - b) for a, b in zip(ref, got)) < 1e-5


def test_pp2_stages_keep_whole_model_names(pp2_results):
    first, last = pp2_results[0]["names"], pp2_results[1]["names"]
    assert "embed_tokens.weight" in first and "lm_head.weight" not in first
    assert "lm_head.weight" in last and "norm.weight" in last and "embed_tokens.weight" not in last
    assert all(n.startswith("layers.0.") for n in first if n.startswith("layers."))
    assert all(n.startswith("layers.1.") for n in last if n.startswith("layers."))
    assert set(first) | set(last) == {n for n, _ in _model("llama").named_parameters()}


@pytest.mark.parametrize("layout", [("tp", False), ("tp", True), ("pp", "gpipe"), ("pp", "1f1b")])
def test_memory_estimate_within_10_percent_of_each_process_peak(pp2_results, layout):
    kind, option = layout
    for rank in (0, 1):
        if kind == "tp":
            est = estimate_parallel_memory(ModelConfig(**MEM), batch=MEM_BATCH, seq=MEM_SEQ, precision="fp32",
                                           tp=2, sequence_parallel=option)
        else:
            est = estimate_parallel_memory(ModelConfig(**MEM), batch=MEM_BATCH, seq=MEM_SEQ, precision="fp32",
                                           pp=2, microbatches=MEM_MICRO, schedule=option, stage=rank)
        assert est.peak == pytest.approx(pp2_results[rank]["memory"][layout], rel=0.10), (layout, rank)


def test_memory_cli_reports_the_busiest_process():
    from click.testing import CliRunner

    from lmkit.train.commands import memory_cmd

    result = CliRunner().invoke(memory_cmd, ["llama-7b", "--tp", "2", "--pp", "2", "--sp", "--batch", "8",
                                             "--seq", "4096", "--microbatches", "8"])
    assert result.exit_code == 0, result.output
    assert "tp=2 x pp=2" in result.output and "pipeline stage 0" in result.output
    single = CliRunner().invoke(memory_cmd, ["llama-7b", "--json"])
    split = CliRunner().invoke(memory_cmd, ["llama-7b", "--tp", "2", "--pp", "2", "--batch", "2", "--json"])
    import json

    # weights per process: a quarter of the model, give or take the embedding/head on the end stages
    assert 0.2 < json.loads(split.output)["weights"] / json.loads(single.output)["weights"] < 0.3


def test_stage_layers_split_evenly_first_stages_take_the_rest():
    assert [list(stage_layers(5, 2, s)) for s in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(stage_layers(4, 4, s)) for s in range(4)] == [[0], [1], [2], [3]]


@pytest.mark.parametrize("change, field", [(dict(n_layers=1), "n_layers"), (dict(tie_embeddings=True), "tie_embeddings")])
def test_models_that_do_not_split_are_refused_by_name(change, field):
    with pytest.raises(ConfigError, match=field):
        check_pipeline_parallel(ModelConfig(**{**SHAPES["llama"], **change}), 2)


def test_parallel_section_is_validated_and_resolved():
    cfg = TrainConfig.from_dict({"parallel": {"tp": 2, "fsdp": True}, "progress": False})
    assert isinstance(cfg.parallel, ParallelConfig) and cfg.parallel.resolve(4).dp == 2
    assert TrainConfig.from_json(cfg.to_json()).parallel == cfg.parallel
    with pytest.raises(ConfigError, match="processes"):
        cfg.parallel.resolve(3)
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"parallel": {"tensor": 2}})
    with pytest.raises(ConfigError, match="strategy"):
        TrainConfig(parallel={"tp": 2}, strategy="ddp")
    with pytest.raises(ConfigError, match="pp_schedule"):
        ParallelConfig(pp=2, pp_schedule="zero-bubble")


def test_memory_estimate_of_the_3d_mesh():
    """dp x tp x pp: FSDP over dp divides the weights (and their gradient and optimizer state) by
    dp again; DDP leaves them; under pp x tp the last stage keeps the gathered, whole logits."""
    from click.testing import CliRunner

    from lmkit.train.commands import memory_cmd

    cfg = ModelConfig(**{**MEM, "n_layers": 4})
    kw = dict(batch=MEM_BATCH, seq=MEM_SEQ, precision="fp32", tp=2, pp=2, microbatches=MEM_MICRO)
    both = estimate_parallel_memory(cfg, **kw)
    assert estimate_parallel_memory(cfg, **kw, dp=2).weights == both.weights  # DDP replicas
    sharded = estimate_parallel_memory(cfg, **kw, dp=2, fsdp=True)
    assert sharded.weights == pytest.approx(both.weights / 2) and sharded.peak < both.peak
    micro = MEM_BATCH // MEM_MICRO
    whole_logits = micro * MEM_SEQ * MEM["vocab_size"] * 4
    last = estimate_parallel_memory(cfg, **kw, stage=1)
    assert last.details["activations_per_micro_batch"] > 2 * whole_logits  # the logits and their log-softmax
    result = CliRunner().invoke(memory_cmd, ["llama-7b", "--tp", "2", "--pp", "2", "--devices", "2", "--zero", "3",
                                             "--batch", "8", "--seq", "512", "--json"])
    single = CliRunner().invoke(memory_cmd, ["llama-7b", "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert 0.1 < json.loads(result.output)["weights"] / json.loads(single.output)["weights"] < 0.15
