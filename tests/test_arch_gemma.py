"""Gemma, Gemma 2 and Gemma 3 text against `transformers` (eager attention: soft-capping).

Tiny random models with 3 layers (Gemma 2 alternates local/global; Gemma 3 with
sliding_window_pattern=2 has both kinds too), sliding_window=8 and 32-token inputs, so the
window, the local RoPE base and the global layers' linear RoPE scaling all matter. Both
directions (HF -> lmkit load, lmkit save -> transformers load) with left padding; the KV-cache
path equals the full forward; greedy `generate` equals `transformers.generate`; a LoRA
adapter saved by lmkit loads in `peft` with equal logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.infer import generate
from lmkit.infer.fused_step import FusedDecoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

transformers = pytest.importorskip("transformers")

V = 97
T = 32
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, initializer_range=0.2, tie_word_embeddings=False)
FAMILIES = ["gemma", "gemma2", "gemma3_text"]


def hf_config(name: str):
    if name == "gemma":
        return transformers.GemmaConfig(**COMMON)
    if name == "gemma2":
        return transformers.Gemma2Config(**COMMON, sliding_window=8, query_pre_attn_scalar=12,
                                         attn_logit_softcapping=4.0, final_logit_softcapping=6.0)
    return transformers.Gemma3TextConfig(**COMMON, sliding_window=8, query_pre_attn_scalar=12, sliding_window_pattern=2,
                                         rope_theta=1000.0, rope_local_base_freq=100.0, final_logit_softcapping=6.0,
                                         rope_scaling={"rope_type": "linear", "factor": 4.0})


def lmkit_config(name: str) -> ModelConfig:
    common = dict(vocab_size=V, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=48,
                  max_seq_len=64, norm_eps=1e-6, norm_unit_offset=True, scale_embeddings=True,
                  activation="gelu_tanh", tie_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  model_type=name)
    if name == "gemma":
        return ModelConfig(**common, rope_theta=500.0)
    types = ["sliding_attention", "full_attention", "sliding_attention"]
    gemma2 = dict(norm_position="sandwich", sliding_window=8, layer_types=types, query_pre_attn_scalar=12,
                  final_logit_softcapping=6.0)
    if name == "gemma2":
        return ModelConfig(**common, **gemma2, attn_logit_softcapping=4.0)
    return ModelConfig(**common, **gemma2, qk_norm="head", rope_theta=1000.0, rope_local_theta=100.0,
                       rope_scaling="linear", rope_scaling_factor=4.0)


def perturb(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every parameter (norm gains included) off its initial value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def inputs():
    ids = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    mask[2, :13] = 0
    return ids, mask


def hf_logits(hf, ids, mask=None):
    kw = {} if mask is None else dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        return hf(input_ids=ids, **kw).logits


def assert_parity(ours, hf):
    ids, mask = inputs()
    with torch.no_grad():
        full = ours(ids).logits
        padded = ours(ids, attention_mask=mask).logits
    assert (full - hf_logits(hf, ids)).abs().max() <= 1e-4
    assert (padded - hf_logits(hf, ids, mask))[mask.bool()].abs().max() <= 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, checkpoint dir, HF model, lmkit model) with the same perturbed weights."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(request.param), attn_implementation="eager").eval()
    perturb(hf)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, path, hf, load_pretrained(path)


def test_hf_checkpoint_loads_with_same_logits(pair):
    name, _, hf, ours = pair
    assert isinstance(ours, DecoderLM) and ours.config.model_type == name
    if name != "gemma":
        assert set(ours.config.layer_types) == {"sliding_attention", "full_attention"}
    assert_parity(ours, hf)


@pytest.mark.parametrize("name", FAMILIES)
def test_lmkit_checkpoint_loads_in_transformers(name, tmp_path):
    torch.manual_seed(0)
    ours = DecoderLM(lmkit_config(name)).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                                 "gemma3_text": "Gemma3ForCausalLM"}[name]
    assert_parity(ours, hf)
    assert load_pretrained(tmp_path).config == ours.config  # the config survives config.json


def test_window_and_local_rope_matter(pair):
    """Without its sliding window (or, for Gemma 3, its local RoPE base) the model differs:
    the parity above really checks both."""
    name, _, _, ours = pair
    if name == "gemma":
        pytest.skip("gemma has neither")
    ids, _ = inputs()
    with torch.no_grad():
        ref = ours(ids).logits
        ours.config.layer_types, saved = None, ours.config.layer_types
        ours.config.sliding_window, window = None, ours.config.sliding_window
        try:
            assert (ours(ids).logits - ref).abs().max() > 1e-2
        finally:
            ours.config.layer_types, ours.config.sliding_window = saved, window
        if name == "gemma3_text":
            local = ours.rotary_local
            ours.rotary_local = ours.rotary
            try:
                assert (ours(ids).logits - ref).abs().max() > 1e-2
            finally:
                ours.rotary_local = local


def test_kv_cache_path_equals_full_forward(pair):
    _, _, _, ours = pair
    ids, mask = inputs()
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        cache = ours.make_cache(3, T)
        bounds = [0, 12, 17, 22, 27] + list(range(28, T + 1))  # prefill, chunks of 5, then 1-token steps
        steps = [ours(ids[:, a:b], attention_mask=mask[:, :b], kv_cache=cache).logits
                 for a, b in zip(bounds, bounds[1:])]
    cached = torch.cat(steps, dim=1)
    assert cached.shape == full.shape
    assert (cached - full)[mask.bool()].abs().max() <= 1e-5


PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [15, 16, 17], [18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]


def test_greedy_generate_matches_transformers(pair):
    _, _, hf, ours = pair
    t = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, pad_token_id=0, max_new_tokens=14, do_sample=False)
    expected = []
    for row in out[:, t:].tolist():
        expected.append(row[: row.index(2) + 1] if 2 in row else row)
    assert FusedDecoder.unsupported(ours, 40) is not None  # Gemma runs through model.forward
    got = generate(ours, PROMPTS, max_new_tokens=14)
    assert [list(s) for s in got.sequences] == expected
    assert max(len(p) + len(s) for p, s in zip(PROMPTS, expected)) > 2 * 8  # beyond the window


def test_lora_adapter_loads_in_peft(pair, tmp_path):
    peft = pytest.importorskip("peft")
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_lora

    _, path, _, _ = pair
    lora = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))
    ours = inject_lora(load_pretrained(path), lora)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_lora(ours, tmp_path / "adapter", base_model_name_or_path=str(path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    base = hf_logits(hf, inputs()[0])
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, _ = inputs()
    with torch.no_grad():
        got = ours(ids).logits
    ref = hf_logits(pm, ids)
    assert (got - ref).abs().max() <= 1e-4
    assert (ref - base).abs().max() > 1e-2  # the adapter changes the output


def test_rmsnorm_and_embedding_scale_round_like_transformers():
    """bf16: the (1 + w) gain is applied in fp32 before rounding, and sqrt(d_model) is rounded
    to bf16 before it scales the embeddings (sqrt(32) = 5.657 -> 5.656)."""
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(hf_config("gemma2")).eval()
    perturb(hf)
    ours = DecoderLM(lmkit_config("gemma2")).eval()
    hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    ids, _ = inputs()
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(hf.model.embed_tokens.weight)
        ours.layers[0].attn_norm.weight.copy_(hf.model.layers[0].input_layernorm.weight)
        x = ours._embed(ids, torch.arange(T)[None])
        assert torch.equal(x, hf.model.embed_tokens(ids))
        assert torch.equal(ours.layers[0].attn_norm(x), hf.model.layers[0].input_layernorm(x))
        assert not torch.equal(x, ours.embed_tokens(ids) * 32**0.5)  # the rounding is what is checked


def test_legacy_gemma3_config_keys(pair, tmp_path):
    """Gemma 3 files on the Hub predate rope_parameters: rope_theta, rope_local_base_freq,
    rope_scaling and sliding_window_pattern without layer_types load as transformers reads them."""
    name, path, _, ours = pair
    if name != "gemma3_text":
        pytest.skip("gemma3_text only")
    hf_json = json.loads((path / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        hf_json.pop(key, None)
    hf_json.update(rope_theta=1000.0, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0},
                   sliding_window_pattern=2)
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(hf_json))
    legacy = load_pretrained(tmp_path)
    assert legacy.config.layer_types == ours.config.layer_types
    assert (legacy.config.rope_theta, legacy.config.rope_local_theta, legacy.config.rope_scaling_factor) == \
        (1000.0, 100.0, 4.0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert_parity(legacy, hf)


def test_config_errors():
    base = lmkit_config("gemma2").to_dict()
    with pytest.raises(ConfigError, match="layer_types"):
        ModelConfig.from_dict({**base, "layer_types": ["full_attention"]})
    with pytest.raises(ConfigError, match="sliding_window is None"):
        ModelConfig.from_dict({**base, "sliding_window": None})
    with pytest.raises(ConfigError, match="rope_local_theta"):
        ModelConfig.from_dict({**base, "layer_types": None, "rope_local_theta": 10.0})
    with pytest.raises(ConfigError, match="arch='decoder' only"):
        ModelConfig.from_dict({**base, "arch": "encoder"})
    with pytest.raises(ConfigError, match="norm_unit_offset"):
        ModelConfig.from_dict({**base, "norm": "layernorm"})
    from lmkit.hub.arch_gemma import config_from_hf, config_to_hf

    with pytest.raises(ConfigError, match="gemma3_text.*attn_logit_softcapping"):
        config_to_hf(ModelConfig.from_dict({**base, "model_type": "gemma3_text", "qk_norm": "head"}))
    with pytest.raises(ConfigError, match="cannot be written as a llama"):
        from lmkit.hub.arch_llama import config_to_hf as llama_to_hf

        llama_to_hf(ModelConfig.from_dict({**lmkit_config("gemma").to_dict(), "model_type": "llama"}))
    with pytest.raises(ConfigError, match="bidirectional"):
        config_from_hf({**hf_config("gemma3_text").to_dict(), "use_bidirectional_attention": True})
