"""QLoRA: NF4 storage measured, gradients only into LoRA, same task as LoRA within 5%."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lmkit.data.sft import sft_loader
from lmkit.errors import ConfigError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.peft.finetune import run_finetune, toy_task
from lmkit.peft.lora import LoraConfig, LoraLinear, disable_adapters, lora_param_count
from lmkit.peft.qlora import QLoraConfig, nf4_storage, prepare_qlora
from lmkit.quant.linear import NF4Linear
from lmkit.quant.nf4 import dequantize_nf4, quantize_nf4
from lmkit.train.config import TrainConfig


def tiny(seed=0):
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                                 max_seq_len=32, norm="rmsnorm", activation="silu", gated_ffn=True,
                                 position="rope", tie_embeddings=False))


def test_base_is_stored_in_nf4():
    model = tiny()
    linear_weights = sum(m.weight.numel() for n, m in model.named_modules()
                         if isinstance(m, nn.Linear) and n != "lm_head")
    prepare_qlora(model, LoraConfig(r=4, target_modules=("all-linear",)))
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 2 * 7  # q k v o gate up down in each layer; lm_head kept
    assert isinstance(model.lm_head, nn.Linear)
    assert not any(type(m) is nn.Linear and m is not model.lm_head and ".lora_" not in n
                   for n, m in model.named_modules() if type(m) is nn.Linear and "lora_" not in n)
    # measured bytes: every NF4 buffer, counted independently of weight_bytes()
    buffer_bytes = sum(b.numel() * b.element_size() for m in nf4 for b in m.buffers())
    stats = nf4_storage(model)
    assert stats["nf4_weights"] == linear_weights
    assert stats["nf4_bytes"] == buffer_bytes
    # 4 bits + an 8-bit absmax per 64 weights + fp32 constants per 256 blocks (+ one offset)
    n_blocks = linear_weights // 64
    expected = linear_weights // 2 + n_blocks + sum(4 * -(-(m.in_features * m.out_features // 64) // 256) + 4
                                                    for m in nf4)
    assert buffer_bytes == expected
    assert 0.5 < stats["bytes_per_weight"] < 0.53  # vs 4 bytes in fp32
    # no full-precision copy of the quantized weights is left as a parameter
    assert all(not hasattr(m, "weight") or m.weight is None for m in nf4)


def test_forward_is_dequantized_base_plus_lora():
    ref = tiny(1)
    q = prepare_qlora(copy.deepcopy(ref), LoraConfig(r=4, target_modules=("q_proj", "down_proj")))
    with torch.no_grad():
        for n, m in q.named_modules():
            if isinstance(m, LoraLinear):
                m.lora_B["default"].weight.normal_()
        # the oracle: plain Linear layers holding dequantize(quantize(W)), plus the same update
        for n, m in ref.named_modules():
            if isinstance(m, nn.Linear) and n != "lm_head":
                m.weight.copy_(dequantize_nf4(quantize_nf4(m.weight, 64, True)))
                target = q.get_submodule(n)
                if isinstance(target, LoraLinear):
                    m.weight.add_(target.delta_weight("default"))
    x = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert (q(x).logits - ref(x).logits).abs().max() <= 1e-4
        with disable_adapters(q):
            base = q(x).logits
        assert (q(x).logits - base).abs().max() > 1e-3


def test_gradients_reach_only_lora_and_count_is_closed_form():
    model = tiny()
    cfg = LoraConfig(r=4, target_modules=("q_proj", "v_proj", "up_proj"))
    prepare_qlora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_param_count(model.config, cfg)
    for m in model.modules():
        if isinstance(m, LoraLinear):
            m.lora_B["default"].weight.data.normal_()
    x = torch.randint(0, 64, (2, 9))
    model.train()
    model(x, labels=x).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if "lora_" in n}
    # the lowest layer's adapters get gradient through the quantized layers above
    assert model.layers[0].self_attn.q_proj.lora_A["default"].weight.grad.abs().sum() > 0
    assert all(b.grad is None for b in model.buffers())


def test_bad_targets_fail_before_quantizing():
    model = tiny()
    with pytest.raises(ConfigError, match="available"):
        prepare_qlora(model, LoraConfig(target_modules=("wq",)))
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    with pytest.raises(ConfigError, match="block_size"):
        QLoraConfig(block_size=3)


@pytest.fixture(scope="module")
def task():
    return toy_task(seed=0, pretrain_steps=60)


def _run(task, method, cfg, tmp_path, steps=40, lr=1e-2):
    model = copy.deepcopy(task.base)
    train = sft_loader(task.train, 8, pack=True, seq_len=128, seed=0)
    held = sft_loader(task.eval, 16, pack=True, seq_len=128, shuffle=False)
    tc = TrainConfig(max_steps=steps, lr=lr, warmup_steps=3, out_dir=str(tmp_path / method), progress=False,
                     device="cpu", eval_steps=0)
    return run_finetune(method, model, task.tokenizer, train, held, cfg, tc)


def test_qlora_trains_within_5_percent_of_lora(task, tmp_path):
    kw = dict(r=8, alpha=16, target_modules=("all-linear",))
    lora = _run(task, "lora", LoraConfig(**kw), tmp_path)
    qlora = _run(task, "qlora", QLoraConfig(**kw), tmp_path)
    for rep in (lora, qlora):
        assert rep.eval_loss < 0.9 * rep.base_eval_loss  # beats the frozen base on held-out data
        assert rep.base_unchanged  # frozen weights (NF4 codes and constants included) bit-identical
    assert qlora.trainable_params == lora.trainable_params and qlora.total_params == lora.total_params
    assert abs(qlora.eval_loss - lora.eval_loss) <= 0.05 * lora.eval_loss
    assert 0.5 < qlora.extra["bytes_per_weight"] < 0.53
