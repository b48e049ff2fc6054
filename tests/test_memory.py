"""The training-memory estimator against measured CPU peaks and published rules of thumb."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.train.memory import (
    ParamCount,
    config_for_memory,
    estimate_memory,
    lora_param_count,
    measure_training_step,
)
from lmkit.train.optim import AdamW

GB = 1e9


def decoder(cfg: ModelConfig) -> torch.nn.Module:
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(cfg)


CASES = [  # (vocab, d_model, layers, heads, kv_heads, d_ff, batch, seq)
    (256, 64, 2, 4, None, 128, 4, 64),
    (1000, 64, 2, 4, 2, 172, 8, 128),
    (128, 64, 2, 4, None, 128, 16, 256),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("precision", ["fp32", "autocast", "bf16"])
def test_estimate_within_10_percent_of_measured_peak(case, precision):
    V, h, L, nh, kv, f, b, s = case
    cfg = ModelConfig(vocab_size=V, d_model=h, n_layers=L, n_heads=nh, n_kv_heads=kv, d_ff=f, max_seq_len=s)
    model = decoder(cfg)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    opt = AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, V, (b, s))
    measured = measure_training_step(
        model, {"input_ids": ids, "labels": ids}, opt,
        autocast_dtype=torch.bfloat16 if precision == "autocast" else None,
    )
    est = estimate_memory(cfg, batch=b, seq=s, precision=precision, optimizer="adamw")
    assert est.peak == pytest.approx(measured.peak, rel=0.10)
    # the static parts are exact
    w = measured.weights + (est.details.get("autocast_weight_cache", 0))
    assert est.weights == pytest.approx(w, rel=1e-9)
    assert est.optimizer_states == measured.optimizer_states
    assert est.gradients == measured.gradients


@pytest.mark.parametrize("case", CASES[:2])
def test_estimate_with_gradient_checkpointing(case):
    V, h, L, nh, kv, f, b, s = case
    cfg = ModelConfig(vocab_size=V, d_model=h, n_layers=L, n_heads=nh, n_kv_heads=kv, d_ff=f, max_seq_len=s)
    model = decoder(cfg)
    if not hasattr(model, "gradient_checkpointing_enable"):
        pytest.skip("DecoderLM has no gradient_checkpointing_enable() yet")
    model.gradient_checkpointing_enable()
    opt = AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, V, (b, s))
    measured = measure_training_step(model, {"input_ids": ids, "labels": ids}, opt)
    est = estimate_memory(cfg, batch=b, seq=s, precision="fp32", checkpointing=True)
    assert est.peak == pytest.approx(measured.peak, rel=0.10)
    assert est.activations < estimate_memory(cfg, batch=b, seq=s, precision="fp32").activations


class _LoRALinear(torch.nn.Module):
    """A minimal LoRA wrapper (the real one lives in lmkit.peft): frozen base + B(A(x))."""

    def __init__(self, base: torch.nn.Linear, r: int) -> None:
        super().__init__()
        self.base = base
        self.A = torch.nn.Linear(base.in_features, r, bias=False, dtype=base.weight.dtype)
        self.B = torch.nn.Linear(r, base.out_features, bias=False, dtype=base.weight.dtype)

    def forward(self, x):
        return self.base(x) + self.B(self.A(x))


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lora_estimate_within_10_percent_of_measured_peak(targets, precision):
    V, h, L, nh, kv, f, b, s = CASES[1]
    cfg = ModelConfig(vocab_size=V, d_model=h, n_layers=L, n_heads=nh, n_kv_heads=kv, d_ff=f, max_seq_len=s)
    model = decoder(cfg)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.requires_grad_(False)
    for layer in model.layers:
        for t in targets:
            parent = layer.self_attn if t in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            setattr(parent, t, _LoRALinear(getattr(parent, t), 8))
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, V, (b, s))
    measured = measure_training_step(model, {"input_ids": ids, "labels": ids}, opt)
    est = estimate_memory(cfg, batch=b, seq=s, precision=precision, method="lora", lora_rank=8, lora_targets=targets)
    assert est.peak == pytest.approx(measured.peak, rel=0.10)
    assert est.optimizer_states == measured.optimizer_states
    assert est.weights == pytest.approx(measured.weights, rel=1e-9)


def test_parameter_count_matches_the_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = ModelConfig(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=176, max_seq_len=64)
    assert ParamCount.of(cfg).total == sum(p.numel() for p in decoder(cfg).parameters())
    # 7B Llama shape against transformers' own model (built on the meta device: no memory)
    seven = config_for_memory("llama-7b")
    with torch.device("meta"):
        hf = LlamaForCausalLM(
            LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                        intermediate_size=11008, max_position_embeddings=4096)
        )
    assert ParamCount.of(seven).total == sum(p.numel() for p in hf.parameters()) == 6_738_415_616


def test_7b_rules_of_thumb():
    # full fine-tuning, mixed-precision AdamW: 16 bytes/param -> 7B = 112 GB before activations
    full = estimate_memory(n_params=7_000_000_000, precision="mixed", method="full")
    assert full.static == pytest.approx(112 * GB)
    assert (full.weights, full.gradients, full.optimizer_states) == (14 * GB, 14 * GB, 84 * GB)
    assert estimate_memory(n_params=7_000_000_000, precision="fp32").static == pytest.approx(112 * GB)
    llama = config_for_memory("llama-7b")
    lora = estimate_memory(llama, method="lora", precision="bf16", seq=512)
    assert lora.weights == pytest.approx(14 * GB, rel=0.05)  # frozen bf16 base ~ 2 bytes/param
    assert lora.params_trainable == 4_194_304  # r=8 on q_proj, v_proj: 32 * 2 * 8 * (4096 + 4096)
    qlora = estimate_memory(llama, method="qlora", precision="bf16", seq=512)
    assert 3.5 * GB <= qlora.weights <= 5 * GB
    # activations grow with sequence; checkpointing cuts them
    a1 = estimate_memory(llama, seq=1024).activations
    a2 = estimate_memory(llama, seq=2048).activations
    assert a2 == pytest.approx(2 * a1, rel=0.05)
    assert estimate_memory(llama, seq=2048, checkpointing=True).activations < a2 / 5


def test_the_notes_formula_is_wrong():
    """Notes: 显存 = 参数量 × 数据类型大小 × (1 + 优化器状态系数) / 梯度累积步数 -> '1B fp16 Adam: 40 GB'."""
    notes = 1e9 * 2 * (1 + 2) / 1
    assert notes == 6 * GB  # not even their own 40 GB
    est = estimate_memory(n_params=1_000_000_000, precision="mixed")
    assert est.static == pytest.approx(16 * GB)  # 2 + 2 + 12 bytes/param
    # and gradient accumulation does not divide it: only the micro-batch (activations) shrinks
    cfg = ModelConfig(vocab_size=32000, d_model=2048, n_layers=16, n_heads=16, d_ff=5632, max_seq_len=2048)
    big, small = estimate_memory(cfg, batch=8), estimate_memory(cfg, batch=2)
    assert big.static == small.static and small.activations < big.activations


def test_zero_sharding():
    n = 8_000_000_000
    base = estimate_memory(n_params=n, precision="mixed")
    z1 = estimate_memory(n_params=n, precision="mixed", zero=1, devices=8)
    z2 = estimate_memory(n_params=n, precision="mixed", zero=2, devices=8)
    z3 = estimate_memory(n_params=n, precision="mixed", zero=3, devices=8)
    assert z1.optimizer_states == base.optimizer_states / 8 and z1.gradients == base.gradients
    assert z2.gradients == base.gradients / 8 and z2.weights == base.weights
    assert z3.weights == base.weights / 8
    assert z3.static == pytest.approx(16 * n / 8)  # ZeRO paper: (2 + 2 + K) * psi / N_d


def test_lora_counts_and_errors():
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    # q: 64->64, v: 64->32 (GQA): r * (in + out) per layer
    assert lora_param_count(cfg, 4, ("q_proj", "v_proj")) == 2 * 4 * ((64 + 64) + (64 + 32))
    with pytest.raises(ConfigError, match="qq_proj"):
        lora_param_count(cfg, 4, ("qq_proj",))
    with pytest.raises(ConfigError, match="precision"):
        estimate_memory(cfg, precision="fp8")
    with pytest.raises(ConfigError, match="zero"):
        estimate_memory(cfg, zero=4)


def test_hf_config_json_reads_like_the_preset(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        intermediate_size=11008, max_position_embeddings=4096,
    ).save_pretrained(tmp_path)
    ours = config_for_memory(str(tmp_path / "config.json"))
    assert ParamCount.of(ours) == ParamCount.of(config_for_memory("llama-7b"))


def test_cli_memory_table_and_json():
    from lmkit.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["memory", "llama-7b", "--seq", "512"])
    assert res.exit_code == 0, res.output
    assert "optimizer states" in res.output and "80.861" in res.output  # 12 B/param x 6.74B
    res = runner.invoke(cli, ["memory", "--params", "7e9", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["total"] == pytest.approx(112e9)
    res = runner.invoke(cli, ["memory", "--params", "1e9", "--layers", "16", "--hidden", "2048", "--seq", "1024",
                              "--method", "full", "--precision", "bf16", "--checkpointing", "--zero", "2", "--devices", "4"])
    assert res.exit_code == 0, res.output and "ZeRO-2 on 4" in res.output
    res = runner.invoke(cli, ["memory", "no-such-model"])
    assert res.exit_code != 0 and "preset" in res.output
