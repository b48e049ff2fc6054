"""Trainer mechanics against independent oracles: torch.optim, transformers' schedules,
F.cross_entropy, and hand-written single-batch training steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError, MissingDependencyError
from lmkit.models.config import ModelConfig
from lmkit.train import SGD, AdamW, TrainConfig, Trainer, cross_entropy, lr_factor, param_groups, set_seed
from lmkit.train.metrics_log import read_metrics

VOCAB = 64


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **kw) -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(seed)
    return DecoderLM(tiny_config(**kw))


class TokenBatches:
    """A resumable stream of CLM batches (random tokens, some label positions ignored)."""

    def __init__(self, n: int = 32, batch: int = 4, seq: int = 16, seed: int = 0, pad_from=None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, batch, seq), generator=g)
        self.pad_from = pad_from  # per-batch number of real tokens (the rest: labels -100)
        self.pos = 0

    def __iter__(self):
        while self.pos < len(self.ids):
            i = self.pos
            self.pos += 1
            yield self.batch(i)
        self.pos = 0

    def batch(self, i: int) -> dict:
        ids = self.ids[i]
        labels = ids.clone()
        if self.pad_from is not None:
            labels[:, self.pad_from[i % len(self.pad_from)]:] = -100
        return {"input_ids": ids, "labels": labels}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(max_steps=4, lr=1e-2, out_dir=str(tmp_path / "run"), progress=False, warmup_steps=0, schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


# ---- TrainConfig -------------------------------------------------------------------------------
def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(warmup_steps=10, max_steps=5)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))


def test_config_json_yaml_roundtrip_and_unknown_keys(tmp_path):
    c = TrainConfig(lr=1e-3, betas=(0.8, 0.95), schedule="linear", max_steps=10, warmup_steps=2)
    assert TrainConfig.from_json(c.to_json()) == c
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.001\nbetas: [0.8, 0.95]\nschedule: linear\nmax_steps: 10\nwarmup_steps: 2\n")
    assert TrainConfig.load(p) == c
    with pytest.raises(ConfigError, match="lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        TrainConfig.load(bad)


# ---- optimizers vs torch.optim -------------------------------------------------------------------
def _run_optimizer(make, steps=5, seed=0):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(7, 5))
    q = torch.nn.Parameter(torch.randn(5))
    opt = make([p, q])
    for i in range(steps):
        loss = ((p.sin() * (i + 1)) ** 2).sum() + (q**3).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return p.detach(), q.detach()


@settings(max_examples=15, deadline=None)
@given(
    lr=st.floats(1e-4, 1e-1),
    wd=st.floats(0.0, 0.3),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.9, 0.9999),
)
def test_adamw_matches_torch(lr, wd, b1, b2):
    ours = _run_optimizer(lambda ps: AdamW(ps, lr=lr, betas=(b1, b2), weight_decay=wd))
    ref = _run_optimizer(lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(b1, b2), weight_decay=wd, foreach=False))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.01), (0.9, True, 0.0)])
def test_sgd_and_momentum_match_torch(momentum, nesterov, wd):
    ours = _run_optimizer(lambda ps: SGD(ps, lr=0.01, momentum=momentum, nesterov=nesterov, weight_decay=wd))
    ref = _run_optimizer(
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=momentum, nesterov=nesterov, weight_decay=wd, foreach=False)
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_weight_decay_groups_exclude_norms_biases_embeddings():
    model = tiny_model(qkv_bias=True)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1)
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "layers.0.self_attn.q_proj.weight" in decayed and "lm_head.weight" in decayed
    assert {"embed_tokens.weight", "norm.weight", "layers.0.attn_norm.weight", "layers.0.self_attn.q_proj.bias"} <= plain
    with_emb = param_groups(model, 0.1, decay_embeddings=True)
    assert "embed_tokens.weight" in {names[id(p)] for p in with_emb[0]["params"]}
    assert len(decayed) + len(plain) == len(list(model.parameters()))


# ---- schedules vs transformers -------------------------------------------------------------------
def _hf_factors(make, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup,total", [(0, 20), (5, 20), (3, 7)])
def test_schedules_match_transformers(warmup, total):
    from transformers import optimization as hf

    def ours(schedule, m=0.0):
        return [lr_factor(s, schedule=schedule, warmup_steps=warmup, max_steps=total, min_lr_ratio=m) for s in range(total)]

    cases = [
        (ours("cosine"), lambda o: hf.get_cosine_schedule_with_warmup(o, warmup, total)),
        (ours("linear"), lambda o: hf.get_linear_schedule_with_warmup(o, warmup, total)),
        (ours("constant"), lambda o: hf.get_constant_schedule_with_warmup(o, warmup)),
        (ours("cosine", 0.1), lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, warmup, total, min_lr_rate=0.1)),
        (ours("linear", 0.1), lambda o: hf.get_polynomial_decay_schedule_with_warmup(o, warmup, total, lr_end=0.1, power=1.0)),
    ]
    for mine, make in cases:
        assert mine == pytest.approx(_hf_factors(make, total), abs=1e-12)


# ---- loss vs F.cross_entropy ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), t=st.integers(2, 6), v=st.integers(2, 11),
    eps=st.sampled_from([0.0, 0.1, 0.37]), seed=st.integers(0, 1000),
)
def test_cross_entropy_matches_torch(b, t, v, eps, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = -100
    ours = cross_entropy(logits, labels, label_smoothing=eps, shift=True)
    n = (labels[:, 1:] != -100).sum()
    if n == 0:
        assert ours.item() == 0.0
        return
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=eps
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# ---- the training step ------------------------------------------------------------------------
def test_grad_accumulation_is_token_weighted(tmp_path):
    """Two micro-batches with different numbers of real tokens == one step on both at once."""
    data = TokenBatches(n=2, batch=2, seq=12, pad_from=[12, 4])
    model = tiny_model()
    ref = tiny_model()
    tr = Trainer(model, cfg(tmp_path, max_steps=1, grad_accum_steps=2, optimizer="sgd", lr=0.5, max_grad_norm=None), data)
    tr.train()
    # oracle: the loss of the concatenated batch, with torch's SGD
    b0, b1 = data.batch(0), data.batch(1)
    ids = torch.cat([b0["input_ids"], b1["input_ids"]])
    labels = torch.cat([b0["labels"], b1["labels"]])
    logits = ref(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    torch.optim.SGD(ref.parameters(), lr=0.5).step()
    assert tr.history[0]["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_micro_batch_without_targets_is_harmless(tmp_path):
    """An all-padding micro-batch (every label -100) adds nothing: no NaN, same update."""
    data = TokenBatches(n=2, batch=2, seq=12, pad_from=[12, 0])
    tr = Trainer(tiny_model(), cfg(tmp_path / "a", max_steps=1, grad_accum_steps=2, optimizer="sgd", lr=0.5), data)
    tr.train()
    only = Trainer(tiny_model(), cfg(tmp_path / "b", max_steps=1, optimizer="sgd", lr=0.5), [data.batch(0)])
    only.train()
    assert tr.history[0]["loss"] == pytest.approx(only.history[0]["loss"], rel=1e-6)
    for p, q in zip(tr.raw_model.parameters(), only.raw_model.parameters()):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mean_weighting_differs_with_uneven_padding(tmp_path):
    data = TokenBatches(n=2, batch=2, seq=12, pad_from=[12, 4])
    tr = Trainer(tiny_model(), cfg(tmp_path, max_steps=1, grad_accum_steps=2, loss_weighting="mean"), data)
    tr.train()
    m = tiny_model()
    losses = [m(**data.batch(i)).loss.item() for i in range(2)]
    assert tr.history[0]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_grad_clipping_reports_pre_clip_norm(tmp_path):
    data = TokenBatches(n=1)
    model, ref = tiny_model(), tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    tr = Trainer(model, cfg(tmp_path, max_steps=1, optimizer="sgd", lr=1.0, max_grad_norm=0.01), data)
    tr.train()
    ref(**data.batch(0)).loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref.parameters())).item()
    assert norm > 0.01
    assert tr.history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    step = torch.sqrt(sum(((p.double() - b.double()) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert step.item() == pytest.approx(0.01, rel=1e-4)  # the update used the clipped gradient


def test_label_smoothing_changes_the_loss(tmp_path):
    data = TokenBatches(n=1)
    tr = Trainer(tiny_model(), cfg(tmp_path, max_steps=1, label_smoothing=0.1), data)
    tr.train()
    logits = tiny_model()(input_ids=data.batch(0)["input_ids"]).logits
    labels = data.batch(0)["labels"]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), label_smoothing=0.1)
    assert tr.history[0]["loss"] == pytest.approx(ref.item(), rel=1e-5)


def test_training_reduces_loss_and_logs_metrics(tmp_path):
    set_seed(0)
    data = TokenBatches(n=2, batch=4, seq=16)  # two batches, memorisable
    c = cfg(tmp_path, max_steps=30, lr=3e-3, schedule="cosine", warmup_steps=3, eval_every=10, eval_steps=2, plot=True)
    tr = Trainer(tiny_model(), c, data, eval_data=TokenBatches(n=2, batch=4, seq=16))
    records = tr.train()
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(1, 31))
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(logged[0])
    evals = [r for r in logged if "eval_ppl" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_perplexity_is_exp_of_token_mean(tmp_path):
    eval_data = TokenBatches(n=3, batch=2, seq=10, pad_from=[10, 3, 7], seed=5)
    model = tiny_model()
    tr = Trainer(model, cfg(tmp_path, eval_steps=0), TokenBatches(n=1), eval_data=eval_data)
    got = tr.evaluate()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(3):
            b = eval_data.batch(i)
            logits = model(input_ids=b["input_ids"]).logits
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, VOCAB), b["labels"][:, 1:].reshape(-1), reduction="sum"
            ).item()
            count += int((b["labels"][:, 1:] != -100).sum())
    assert got["eval_tokens"] == count
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-6)
    assert got["eval_ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)


def test_bf16_autocast_on_cpu(tmp_path):
    data = TokenBatches(n=2)
    tr = Trainer(tiny_model(), cfg(tmp_path, max_steps=6, precision="bf16", lr=3e-3), data)
    rec = tr.train()
    assert all(math.isfinite(r["loss"]) for r in rec)
    assert next(tr.raw_model.parameters()).dtype == torch.float32  # fp32 master weights


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16.*GPU"):
        Trainer(tiny_model(), cfg(tmp_path, precision="fp16", device="cpu"), TokenBatches(n=1))


def test_gradient_checkpointing_needs_the_model_method(tmp_path):
    class NoCheckpointing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="gradient_checkpointing_enable"):
        Trainer(NoCheckpointing(), cfg(tmp_path, gradient_checkpointing=True), [])


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    model = tiny_model()
    if not hasattr(model, "gradient_checkpointing_enable"):
        pytest.skip("DecoderLM has no gradient_checkpointing_enable() yet")
    runs = []
    for ckpt in (False, True):
        tr = Trainer(tiny_model(), cfg(tmp_path / str(ckpt), max_steps=3, gradient_checkpointing=ckpt), TokenBatches(n=3))
        runs.append([r["loss"] for r in tr.train()])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install"):
            Trainer(tiny_model(), cfg(tmp_path, tensorboard=True), TokenBatches(n=1))
    else:
        tr = Trainer(tiny_model(), cfg(tmp_path, tensorboard=True, max_steps=1), TokenBatches(n=1))
        tr.train()
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_model_without_loss_is_a_clear_error(tmp_path):
    data = [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}]
    tr = Trainer(tiny_model(), cfg(tmp_path, max_steps=1), data)
    with pytest.raises(ConfigError, match="labels"):
        tr.train()


@pytest.mark.slow
def test_torch_compile_trains(tmp_path):
    tr = Trainer(tiny_model(), cfg(tmp_path, max_steps=2, compile=True), TokenBatches(n=2))
    eager = Trainer(tiny_model(), cfg(tmp_path / "e", max_steps=2), TokenBatches(n=2))
    assert [r["loss"] for r in tr.train()] == pytest.approx([r["loss"] for r in eager.train()], rel=1e-4)
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert "embed_tokens.weight" in state["param_shapes"]  # saved without the _orig_mod. prefix
