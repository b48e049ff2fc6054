"""GPT-NeoX / Pythia checkpoints (hub/arch_neox.py) against transformers' GPTNeoXForCausalLM.

Random tiny models, both directions through a checkpoint directory, at 40 tokens with left
padding: parallel and sequential residual, partial rotary (rotary_pct), a RoPE scaling kind
past its original context, the per-head fused query_key_value; the KV cache equals the full
forward, greedy generate equals transformers.generate, and a LoRA on q/k/v loads in PEFT.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.hub.arch_neox import fused_layers
from lmkit.infer.fused_step import FusedDecoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

transformers = pytest.importorskip("transformers")
from parity_checks import (assert_cache_matches_full, assert_greedy_matches, assert_lora_loads_in_peft,  # noqa: E402
                           hf_to_lmkit_to_hf, lmkit_to_hf, perturb)

V = 97


def hf_config(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    return transformers.GPTNeoXConfig(**{**base, **kw})


CASES = {
    "pythia": dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}),
    "sequential-yarn": dict(use_parallel_residual=False, attention_bias=False, hidden_act="gelu_new",
                            rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                             "rope_theta": 1e4, "partial_rotary_factor": 0.25}),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(**CASES[request.param]),
                                                       attn_implementation="eager").eval()
    perturb(hf)
    ours = hf_to_lmkit_to_hf(hf, V, tmp_path_factory.mktemp(request.param))
    return hf, ours


def test_config_is_read(pair):
    hf, ours = pair
    cfg = ours.config
    assert cfg.parallel_residual == hf.config.use_parallel_residual
    assert cfg.partial_rotary_factor == hf.config.rope_parameters["partial_rotary_factor"]
    assert cfg.norm == "layernorm" and not cfg.gated_ffn and not cfg.tie_embeddings


def test_cache_and_generate(pair):
    hf, ours = pair
    assert_cache_matches_full(ours, V)
    assert_greedy_matches(ours, hf, V)


def test_fused_qkv_is_per_head_interleaved():
    f = fused_layers(ModelConfig(d_model=8, n_heads=2, vocab_size=V))[0]
    q, k, v = (torch.arange(8)[:, None] + 100 * j for j in range(3))
    fused = f.fuse([q, k, v])
    assert fused[:, 0].tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203,
                                    4, 5, 6, 7, 104, 105, 106, 107, 204, 205, 206, 207]
    assert all(torch.equal(a, b) for a, b in zip(f.split(fused, [8, 8, 8]), (q, k, v)))


def test_lmkit_built_neox_loads_in_transformers(tmp_path):
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, norm="layernorm",
                      activation="gelu", gated_ffn=False, qkv_bias=True, o_bias=True, ffn_bias=True,
                      parallel_residual=True, partial_rotary_factor=1.0, rope_theta=1e4, bos_token_id=1,
                      eos_token_id=2, model_type="gpt_neox")
    torch.manual_seed(0)
    ours = DecoderLM(cfg).eval()
    lmkit_to_hf(ours, V, tmp_path)
    saved = json.loads((tmp_path / "native" / "config.json").read_text())
    assert saved["rotary_pct"] == 1.0 and saved["rope_parameters"]["partial_rotary_factor"] == 1.0
    assert "parallel residual" in FusedDecoder.unsupported(ours)


@pytest.mark.parametrize("lora", [dict(r=2, alpha=4), dict(r=3, alpha=5, use_rslora=True)], ids=["lora", "rslora"])
def test_lora_adapter_loads_in_peft(pair, tmp_path, lora):
    pytest.importorskip("peft")
    hf, ours = pair
    assert_lora_loads_in_peft(hf, ours, V, tmp_path, ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"), **lora)


def test_lora_on_part_of_the_fused_layer(pair, tmp_path):
    pytest.importorskip("peft")
    hf, ours = pair
    assert_lora_loads_in_peft(hf, ours, V, tmp_path, ("v_proj",), r=2, alpha=4)
