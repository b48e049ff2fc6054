"""RoPE scaling kinds llama3, yarn and longrope (and partial rotary) against transformers.

The inverse frequencies and attention factor equal transformers' ROPE_INIT_FUNCTIONS; a Llama
checkpoint with each kind loads both ways with equal logits at 40 tokens, past the original
context of 16, with left padding; the KV-cache path equals the full forward and greedy generate
equals transformers.generate.
"""

from __future__ import annotations

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.infer.fused_step import FusedDecoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.positional import RotaryEmbedding

transformers = pytest.importorskip("transformers")
from parity_checks import (assert_cache_matches_full, assert_greedy_matches, hf_to_lmkit_to_hf,  # noqa: E402
                           lmkit_to_hf, perturb)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

V = 97
HEAD_DIM = 8
LONG = [1.0, 1.5, 2.5, 4.0]  # one factor per rotated frequency (head_dim 8 -> 4)
SHORT = [1.0, 1.1, 1.2, 1.3]
ROPES = {
    "llama3": dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, beta_fast=8.0, beta_slow=0.5),
    "yarn-mscale": dict(rope_type="yarn", factor=3.0, original_max_position_embeddings=16, mscale=0.9,
                        mscale_all_dim=0.5, truncate=False),
    "yarn-attention": dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=16,
                           attention_factor=1.3),
    "longrope": dict(rope_type="longrope", short_factor=SHORT, long_factor=LONG,
                     original_max_position_embeddings=16),
    "longrope-factor": dict(rope_type="longrope", short_factor=SHORT, long_factor=LONG, factor=3.0,
                            attention_factor=1.2, original_max_position_embeddings=16),
    "linear": dict(rope_type="linear", factor=2.0),
}


def hf_config(rope: dict, **kw):
    return transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
        rope_parameters={**rope, "rope_theta": 500.0}, **kw)


@pytest.mark.parametrize("name", list(ROPES))
def test_tables_equal_transformers_rope_init(name):
    """inv_freq and attention factor, short and long (the longrope switch), from lmkit's config reader."""
    from lmkit.hub.arch_llama import config_from_hf

    hf = hf_config(ROPES[name])
    cfg = config_from_hf(hf.to_dict())
    rotary = RotaryEmbedding(cfg)
    fn = ROPE_INIT_FUNCTIONS[hf.rope_parameters["rope_type"]]
    for seq_len in (8, 40):
        inv, factor = fn(hf, None, seq_len=seq_len)
        pos = torch.arange(seq_len)[None]
        freqs = pos[..., None].float() * inv
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = rotary(pos)
        assert torch.allclose(cos, emb.cos() * factor, atol=1e-6) and torch.allclose(sin, emb.sin() * factor, atol=1e-6)


@pytest.mark.parametrize("name", ["llama3", "yarn", "longrope"])
def test_llama_with_scaling_both_ways(name, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(ROPES[name]), attn_implementation="eager").eval()
    perturb(hf)
    ours = hf_to_lmkit_to_hf(hf, V, tmp_path)
    assert ours.config.rope_scaling == name and ours.config.rope_original_max_seq_len == 16
    assert_cache_matches_full(ours, V)
    assert_greedy_matches(ours, hf, V)


@pytest.mark.parametrize("name", ["yarn-mscale", "yarn-attention", "longrope-factor", "linear"])
def test_more_parameters_load(name, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(ROPES[name]), attn_implementation="eager").eval()
    hf_to_lmkit_to_hf(hf, V, tmp_path)


def native(kind: str, **params) -> ModelConfig:
    return ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
                       norm_eps=1e-6, bos_token_id=1, eos_token_id=2, model_type="llama", rope_theta=500.0,
                       rope_scaling=kind, rope_scaling_factor=4.0, rope_original_max_seq_len=16, rope_params=params)


@pytest.mark.parametrize("cfg", [native("llama3", low_freq_factor=1.0, high_freq_factor=4.0),
                                 native("yarn", beta_fast=16, mscale=1.0, mscale_all_dim=1.0),
                                 native("longrope", short_factor=SHORT, long_factor=LONG)],
                         ids=["llama3", "yarn", "longrope"])
def test_lmkit_built_model_loads_in_transformers(cfg, tmp_path):
    torch.manual_seed(0)
    lmkit_to_hf(DecoderLM(cfg).eval(), V, tmp_path)


def test_legacy_rope_scaling_key_wins(tmp_path):
    """transformers 4 configs: rope_scaling replaces rope_parameters, rope_theta at the top level."""
    from lmkit.hub.arch_llama import config_from_hf

    hf = hf_config({}).to_dict()
    hf.update(rope_parameters={"rope_type": "default"}, rope_theta=123.0,
              rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32})
    cfg = config_from_hf(hf)
    assert (cfg.rope_scaling, cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_original_max_seq_len) == \
        ("yarn", 123.0, 2.0, 32)


@pytest.mark.parametrize("bad, match", [
    (dict(rope_scaling="yarn", rope_params={"low_freq_factor": 1.0}), "not parameters"),
    (dict(rope_scaling="llama3", rope_params={"low_freq_factor": 4.0, "high_freq_factor": 1.0}), "llama3"),
    (dict(rope_scaling="longrope", rope_params={"short_factor": [1.0], "long_factor": LONG}), "short_factor"),
    (dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
])
def test_rope_params_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(d_model=32, n_heads=4, **bad)


def test_unknown_rope_type_is_refused():
    from lmkit.hub.arch_llama import config_from_hf

    with pytest.raises(ConfigError, match="not implemented"):
        config_from_hf(hf_config({"rope_type": "mrope", "factor": 2.0}).to_dict() | {
            "rope_parameters": {"rope_type": "mrope", "factor": 2.0}})


def test_partial_rotary_rotates_only_the_first_dims():
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, partial_rotary_factor=0.25)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(5)[None])
    assert cos.shape[-1] == 4
    from lmkit.models.positional import apply_rope

    x = torch.randn(1, 2, 5, 16)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:]) and not torch.allclose(y[..., :4], x[..., :4])


def test_fused_step_uses_scaled_tables_and_refuses_longrope():
    """llama3 / yarn change only the cos/sin tables, which the fused step takes from the model;
    longrope switches tables with the sequence length, so it runs unfused."""
    torch.manual_seed(0)
    for cfg in (native("llama3", low_freq_factor=1.0, high_freq_factor=4.0), native("yarn")):
        model = DecoderLM(cfg).eval()
        assert FusedDecoder.unsupported(model) is None
        fused = FusedDecoder(model)
        ids = torch.randint(3, V, (2, 30))
        cache = model.make_cache(2, 31)
        pos = torch.arange(30)[None].expand(2, 30)
        with torch.no_grad():
            got = fused(ids, pos, cache, last_only=False)
            want = model(ids).logits
        assert (got - want).abs().max() <= 1e-4
    longrope = DecoderLM(native("longrope", short_factor=SHORT, long_factor=LONG))
    assert "longrope" in FusedDecoder.unsupported(longrope.eval())
    partial = DecoderLM(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, partial_rotary_factor=0.5))
    assert "partial rotary" in FusedDecoder.unsupported(partial.eval())


def test_qwen2_with_yarn_both_ways(tmp_path):
    """Qwen2.5's long-context configs: yarn in a qwen2 checkpoint."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=1, eos_token_id=2, rope_parameters={**ROPES["yarn"], "rope_theta": 1e4})
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    perturb(hf)
    assert hf_to_lmkit_to_hf(hf, V, tmp_path).config.rope_scaling == "yarn"
