"""quantize_model on lmkit models, quantized checkpoints save/load, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lmkit.errors import CheckpointError
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.presets import preset
from lmkit.quant.checkpoint import load_quantized, save_quantized
from lmkit.quant.linear import GroupQuantLinear, Int8DynamicLinear, Int8Linear, LLMInt8Linear, NF4Linear
from lmkit.quant.quantize_model import quantize_model, quantized_weight_bytes

TYPES = {"int8": Int8Linear, "w8a8": Int8DynamicLinear, "llm-int8": LLMInt8Linear, "nf4": NF4Linear, "rtn": GroupQuantLinear}


def tiny(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=32,
                      model_type="llama", tie_embeddings=True, **kw)
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("method,tol", [("int8", 0.02), ("w8a8", 0.03), ("llm-int8", 0.03), ("nf4", 0.15), ("rtn", 0.2)])
def test_quantize_model_methods(method, tol):
    model = tiny()
    ids = torch.randint(0, 96, (2, 12))
    ref = model(ids).logits
    q = quantize_model(copy.deepcopy(model), method, group_size=32)
    linears = [n for n, m in q.named_modules() if isinstance(m, TYPES[method])]
    assert len(linears) == 14 and "lm_head" not in linears
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.embed_tokens.weight  # tie kept
    assert not any(p.requires_grad for n, p in q.named_parameters() if "proj" in n)
    out = q(ids).logits
    assert (out - ref).norm() / ref.norm() < tol
    assert q.quantization["method"] == method


def test_memory_ratios():
    model = tiny()
    fp32 = sum(m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    assert fp32 / quantized_weight_bytes(quantize_model(copy.deepcopy(model), "int8")) >= 3.5
    assert fp32 / quantized_weight_bytes(quantize_model(copy.deepcopy(model), "nf4")) >= 6


def test_skip_and_targets():
    model = quantize_model(tiny(), "int8", skip=["lm_head", "down_proj"])
    assert type(model.layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(model.layers[0].mlp.up_proj, Int8Linear)
    model = quantize_model(tiny(), "int8", targets=["q_proj", "layers.1.mlp"])
    assert isinstance(model.layers[0].self_attn.q_proj, Int8Linear)
    assert type(model.layers[0].self_attn.k_proj) is nn.Linear
    assert isinstance(model.layers[1].mlp.gate_proj, Int8Linear)
    assert type(model.layers[0].mlp.gate_proj) is nn.Linear


def test_bad_input():
    with pytest.raises(ValueError, match="supports nn.Linear layers only"):
        quantize_model(tiny(), "int8", targets=["embed_tokens"])
    with pytest.raises(ValueError, match="Embedding"):
        quantize_model(tiny(), "nf4", targets=["embed_tokens"])
    conv = nn.Sequential(nn.Conv1d(4, 4, 3))
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(conv, "int8")
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(tiny(), "nf4", block_size=100)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(tiny(), "rtn", group_size=48)
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_model(tiny(), "int3")
    with pytest.raises(ValueError, match="matches no module"):
        quantize_model(tiny(), "int8", targets=["w_proj"])
    m = quantize_model(tiny(), "int8")
    with pytest.raises(ValueError, match="already quantized|no nn.Linear"):
        quantize_model(m, "int8")


@pytest.mark.parametrize("method", ["int8", "w8a8", "llm-int8", "nf4", "rtn", "gptq"])
def test_checkpoint_round_trip(tmp_path, method):
    model = tiny()
    kw = {"calib": torch.randint(0, 96, (4, 12))} if method == "gptq" else {}
    q = quantize_model(model, method, group_size=32, **kw)
    save_quantized(q, tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert meta["method"] == method and meta["arch"]["class"] == "DecoderLM" and len(meta["modules"]) == 14
    back = load_quantized(tmp_path / "q")
    ids = torch.randint(0, 96, (2, 10))
    torch.testing.assert_close(back(ids).logits, q(ids).logits)
    assert back.lm_head.weight is back.embed_tokens.weight
    # into a freshly built model of the same architecture
    again = load_quantized(tmp_path / "q", model=tiny())
    torch.testing.assert_close(again(ids).logits, q(ids).logits)


def test_one_group_per_row(tmp_path):
    model = tiny()
    q = quantize_model(model, "gptq", group_size=None, calib=torch.randint(0, 96, (4, 12)))
    down = q.layers[0].mlp.down_proj
    assert down.group_size == 128 and down.scales.shape == (64, 1)
    save_quantized(q, tmp_path / "q")
    ids = torch.randint(0, 96, (2, 10))
    torch.testing.assert_close(load_quantized(tmp_path / "q")(ids).logits, q(ids).logits)


def test_checkpoint_into_wrong_architecture(tmp_path):
    save_quantized(quantize_model(tiny(), "nf4"), tmp_path / "q")
    with pytest.raises(CheckpointError, match="d_model"):
        load_quantized(tmp_path / "q", model=DecoderLM(ModelConfig(vocab_size=96, d_model=128, n_layers=2,
                                                                    n_heads=4, n_kv_heads=2, d_ff=128,
                                                                    max_seq_len=32, model_type="llama",
                                                                    tie_embeddings=True)))
    with pytest.raises(CheckpointError, match="not a LSTMLM|for a DecoderLM"):
        from lmkit.models.build import build_model

        load_quantized(tmp_path / "q", model=build_model(preset("lstm-tiny", vocab_size=96)))
    with pytest.raises(CheckpointError, match="not a quantized"):
        load_quantized(tmp_path)
    with pytest.raises(CheckpointError, match="not quantized"):
        save_quantized(tiny(), tmp_path / "r")


def test_gpt2_style_with_biases(tmp_path):
    torch.manual_seed(0)
    m = DecoderLM(preset("gpt2-tiny", vocab_size=80, d_model=64, n_layers=1, n_heads=4, d_ff=128)).eval()
    ids = torch.randint(0, 80, (2, 8))
    ref = m(ids).logits
    q = quantize_model(m, "int8")
    assert q.layers[0].self_attn.q_proj.bias is not None
    assert (q(ids).logits - ref).norm() / ref.norm() < 0.02
    save_quantized(q, tmp_path / "g")
    torch.testing.assert_close(load_quantized(tmp_path / "g")(ids).logits, q(ids).logits)
