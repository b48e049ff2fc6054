"""Hugging Face checkpoint I/O for decoders, against `transformers` as the oracle.

Both directions for gpt2, llama, qwen2, mistral (sliding window shorter than the sequence)
and mixtral: an HF model saved with `save_pretrained` loads into lmkit with the same logits,
and an lmkit model saved by lmkit loads into `AutoModelForCausalLM` with the same logits.
Plus sharding, dtype, and every way a checkpoint can be bad.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.hub.pretrained import arch_module, load_state_dict_strict
from lmkit.hub.safetensors_io import read_state_dict, write_state_dict
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

V = 97


ARCHS = ["gpt2", "llama", "qwen2", "mistral", "mixtral"]
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


def hf_config(name: str):
    if name == "gpt2":
        return transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=1, eos_token_id=2)
    if name == "llama":
        return transformers.LlamaConfig(**SMALL, attention_bias=True, rope_theta=500.0)
    if name == "llama-dynamic":  # dynamic NTK: the 12-token input exceeds the trained 8 positions
        return transformers.LlamaConfig(**{**SMALL, "max_position_embeddings": 8},
                                        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    if name == "qwen2":
        return transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)
    if name == "mistral":
        return transformers.MistralConfig(**SMALL, sliding_window=4)
    return transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=5)


def lmkit_config(name: str) -> ModelConfig:
    common = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64,
                  bos_token_id=1, eos_token_id=2, model_type=name)
    if name == "gpt2":
        return ModelConfig(**common, norm="layernorm", activation="gelu_tanh", gated_ffn=False, position="learned",
                           qkv_bias=True, o_bias=True, ffn_bias=True, tie_embeddings=True)
    common.update(n_kv_heads=2, norm_eps=1e-6)
    if name == "llama":
        return ModelConfig(**common, rope_theta=500.0, rope_scaling="linear", rope_scaling_factor=2.0)
    if name == "llama-ntk":  # static NTK has no HF name: written as the equivalent larger rope_theta
        return ModelConfig(**{**common, "model_type": "llama"}, rope_scaling="ntk", rope_scaling_factor=4.0)
    if name == "qwen2":
        return ModelConfig(**common, qkv_bias=True, tie_embeddings=True, rope_theta=1e6)
    if name == "mistral":
        return ModelConfig(**common, sliding_window=4)
    return ModelConfig(**common, n_experts=4, n_experts_per_tok=2, sliding_window=5, rope_theta=1e6)


def perturb(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every parameter (norm gains and biases included) off its initial value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :7] = 0
    return ids, mask


def hf_logits(hf, ids, mask=None):
    kw = {}
    if mask is not None:
        kw = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        return hf(input_ids=ids, **kw).logits


def assert_parity(ours, hf):
    ids, mask = inputs()
    with torch.no_grad():
        full = ours(ids).logits
        padded = ours(ids, attention_mask=mask).logits
    assert (full - hf_logits(hf, ids)).abs().max() <= 1e-4
    keep = mask.bool()
    assert (padded - hf_logits(hf, ids, mask))[keep].abs().max() <= 1e-4


@pytest.mark.parametrize("name", ARCHS + ["llama-dynamic"])
def test_hf_checkpoint_loads_with_same_logits(name, tmp_path):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config(name), attn_implementation="eager").eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, DecoderLM) and ours.config.model_type == name.split("-")[0]
    assert_parity(ours, hf)


@pytest.mark.parametrize("name", ARCHS + ["llama-ntk"])
def test_lmkit_checkpoint_loads_in_transformers(name, tmp_path):
    torch.manual_seed(0)
    ours = DecoderLM(lmkit_config(name)).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert_parity(ours, hf)
    # and back: the config survives the round trip through config.json
    again = load_pretrained(tmp_path)
    if ours.config.rope_scaling != "ntk":
        assert again.config == ours.config


def test_sliding_window_is_exercised(tmp_path):
    """The mistral parity test would be vacuous if the window never bit: it changes the logits."""
    cfg = lmkit_config("mistral")
    torch.manual_seed(0)
    a = DecoderLM(cfg).eval()
    perturb(a)
    b = DecoderLM(ModelConfig(**{**cfg.to_dict(), "sliding_window": None})).eval()
    b.load_state_dict(a.state_dict())
    ids, _ = inputs()
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert torch.allclose(la[:, :4], lb[:, :4], atol=1e-6)  # inside the window: identical
    assert (la[:, 4:] - lb[:, 4:]).abs().max() > 1e-3


def test_mixtral_fused_transformers5_layout_loads(tmp_path):
    """transformers >= 5 holds Mixtral experts fused in memory; that layout loads too."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config("mixtral"), attn_implementation="eager").eval()
    perturb(hf)
    assert any(k.endswith("experts.gate_up_proj") for k in hf.state_dict())
    write_state_dict({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path)
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    assert_parity(load_pretrained(tmp_path), hf)


def test_sharded_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = DecoderLM(lmkit_config("llama")).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert all((tmp_path / s).exists() for s in shards)
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in ours.state_dict().values())
    again = load_pretrained(tmp_path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert_parity(ours, hf)
    # re-saving unsharded replaces the shards instead of leaving stale ones behind
    save_pretrained(again, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


def test_dtype_and_tied_weights(tmp_path):
    torch.manual_seed(0)
    ours = DecoderLM(lmkit_config("qwen2")).eval()
    save_pretrained(ours, tmp_path)
    half = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.embed_tokens.weight.dtype == torch.bfloat16
    assert half.lm_head.weight is half.embed_tokens.weight
    assert half.rotary.inv_freq.dtype == torch.float32  # buffers stay fp32
    save_pretrained(half, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_pretrained(tmp_path / "bf16").embed_tokens.weight.dtype == torch.bfloat16  # kept as stored


def test_config_round_trips_through_transformers(tmp_path):
    ours = DecoderLM(lmkit_config("mixtral"))
    save_pretrained(ours, tmp_path)
    hf_cfg = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (hf_cfg.num_local_experts, hf_cfg.num_key_value_heads, hf_cfg.sliding_window) == (4, 2, 5)
    arch = arch_module("mixtral")
    back = arch.config_from_hf(hf_cfg.to_dict())
    assert dataclasses.replace(back, extra={}) == ours.config  # extra: HF's generic fields


def test_describe_checkpoint(tmp_path):
    from lmkit.hub.describe import describe_checkpoint

    save_pretrained(DecoderLM(lmkit_config("mixtral")), tmp_path)
    text = describe_checkpoint(tmp_path)
    assert "mixtral" in text and "4 experts" in text


# ---- bad input --------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    torch.manual_seed(0)
    save_pretrained(DecoderLM(lmkit_config("llama")), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_unknown_model_type(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="falcon.*gpt2.*llama.*mixtral"):
        load_pretrained(saved)


def _edit_weights(directory: Path, fn) -> None:
    sd = read_state_dict(directory)
    fn(sd)
    write_state_dict(sd, directory)


def test_missing_unexpected_misshaped_tensors_are_named(saved):
    def damage(sd):
        del sd["model.layers.1.self_attn.k_proj.weight"]
        sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
        sd["model.norm.weight"] = torch.zeros(31)

    _edit_weights(saved, damage)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(saved)
    msg = str(err.value)
    assert "layers.1.self_attn.k_proj.weight" in msg  # missing
    assert "model.layers.0.self_attn.extra.weight" in msg  # unexpected
    assert "norm.weight: expected (32,), found (31,)" in msg  # mis-shaped
    # strict=False tolerates missing/unexpected but never a wrong shape
    with pytest.raises(CheckpointError, match="norm.weight"):
        load_pretrained(saved, strict=False)


def test_load_state_dict_strict_copies_nothing_on_error():
    model = DecoderLM(lmkit_config("llama"))
    before = model.embed_tokens.weight.clone()
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    sd["norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError):
        load_state_dict_strict(model, sd)
    assert torch.equal(model.embed_tokens.weight, before)


def test_truncated_safetensors_is_named(saved):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_pretrained(saved)
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(saved)
    f.write_bytes((200).to_bytes(8, "little") + b"{not json" + b" " * 300)
    with pytest.raises(CheckpointError, match="model.safetensors.*not valid JSON"):
        load_pretrained(saved)


def test_missing_shard_is_named(tmp_path):
    save_pretrained(DecoderLM(lmkit_config("llama")), tmp_path, max_shard_bytes=20_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_pretrained(tmp_path)


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/lmkit_unpickled_marker",))


def test_pickle_weights_are_refused_not_unpickled(tmp_path):
    import pickle

    marker = Path("/tmp/lmkit_unpickled_marker")
    if marker.exists():
        marker.rmdir()
    save_pretrained(DecoderLM(lmkit_config("llama")), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError, match="only safetensors|only pickle"):
        load_pretrained(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden_size": 30}, "divisible"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"rope_parameters": {"rope_type": "proportional", "factor": 4.0, "rope_theta": 1e4}, "rope_scaling": None},
         "proportional"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"vocab_size": None}, "vocab_size"),
    ],
)
def test_self_contradicting_config(saved, change, match):
    cfg = json.loads((saved / "config.json").read_text())
    cfg.pop("head_dim")
    cfg.update(change)
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        load_pretrained(saved)


def test_out_of_range_special_ids_and_unread_fields_warn(saved):
    """Metadata the forward never reads does not block a load (transformers loads it too): an eos id
    past the vocabulary is dropped and an unknown field kept, each with a warning."""
    cfg = json.loads((saved / "config.json").read_text())
    cfg.update(eos_token_id=5000, pad_token_id=-1, some_future_field={"x": 1})
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning) as record:
        model = load_pretrained(saved)
    text = " ".join(str(w.message) for w in record)
    assert "eos_token_id=5000" in text and "pad_token_id=-1" in text and "some_future_field" in text
    assert model.config.eos_token_id is None and model.config.extra["some_future_field"] == {"x": 1}
    with pytest.raises(ConfigError, match="eos_token_id"):  # lmkit's own configs stay strict
        ModelConfig(vocab_size=V, eos_token_id=5000)


def test_tiny_gpt2_with_default_special_ids_loads(tmp_path):
    """GPT2Config's default bos/eos id 50256 on a 100-token vocabulary: transformers loads it, so does lmkit."""
    hf = AutoModelForCausalLM.from_config(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2,
                                                                  n_head=4), attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="50256"):
        ours = load_pretrained(tmp_path)
    assert ours.config.bos_token_id is None and ours.config.eos_token_id is None
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_qwen2_mixed_layer_types_rejected():
    hf = hf_config("qwen2").to_dict()
    hf.update(use_sliding_window=True, sliding_window=4, max_window_layers=1,
              layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ConfigError, match="mix"):
        arch_module("qwen2").config_from_hf(hf)
    hf.update(layer_types=["sliding_attention"] * 2)
    assert arch_module("qwen2").config_from_hf(hf).sliding_window == 4


def test_unrepresentable_model_is_refused(tmp_path):
    cfg = lmkit_config("llama")
    bad = ModelConfig(**{**cfg.to_dict(), "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="gpt2"):
        save_pretrained(DecoderLM(bad), tmp_path / "x")
    with pytest.raises(CheckpointError, match="model_type"):
        save_pretrained(DecoderLM(ModelConfig(**{**cfg.to_dict(), "model_type": ""})), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_interrupted_save_keeps_previous_checkpoint(saved, monkeypatch):
    (saved / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def flaky(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash mid-write")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(DecoderLM(lmkit_config("llama")), saved, max_shard_bytes=20_000)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == ["ckpt"]  # no temp dirs left
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    save_pretrained(DecoderLM(lmkit_config("llama")), saved, max_shard_bytes=20_000)
    assert (saved / "tokenizer.json").read_text() == "{}"  # files we do not own survive a save
    load_pretrained(saved)
