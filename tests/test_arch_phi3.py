"""Phi-3 family checkpoints (hub/arch_phi3.py) against transformers' Phi3ForCausalLM.

Random tiny models, both directions through a checkpoint directory, at 40 tokens with left
padding: default RoPE, LongRoPE past its original context of 16 (Phi-3.5) and partial rotary
(Phi-4-mini); fused qkv_proj / gate_up_proj split into lmkit's parts and back; the KV cache equals
the full forward, greedy generate equals transformers.generate, and a LoRA on q/k/v and gate/up
loads in PEFT (fused, rank 3r / 2r) with equal logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.hub.arch_phi3 import config_from_hf
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM

transformers = pytest.importorskip("transformers")
from parity_checks import (assert_cache_matches_full, assert_greedy_matches, assert_lora_loads_in_peft,  # noqa: E402
                           hf_to_lmkit_to_hf, lmkit_to_hf, perturb)

V = 97
LONG = [1.0, 4.0, 16.0, 64.0]  # far from SHORT, so the switch changes the greedy tokens
SHORT = [1.0, 1.1, 1.2, 1.3]


def hf_config(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=64,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    return transformers.Phi3Config(**{**base, **kw})


CASES = {
    "phi3-window": dict(sliding_window=8),  # Phi-3-mini's sliding window, shorter than the 40 tokens
    "phi3.5-longrope": dict(original_max_position_embeddings=16, rope_parameters={
        "rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "rope_theta": 1e4}),
    "phi4-mini-partial": dict(original_max_position_embeddings=16, partial_rotary_factor=0.5, rope_parameters={
        "rope_type": "longrope", "short_factor": SHORT[:2], "long_factor": LONG[:2], "rope_theta": 1e4,
        "partial_rotary_factor": 0.5}),
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
    assert cfg.partial_rotary_factor == hf.config.rope_parameters.get("partial_rotary_factor", 1.0)
    assert cfg.rope_scaling == (None if hf.config.rope_parameters["rope_type"] == "default" else "longrope")
    assert "layers.0.self_attn.k_proj.weight" in ours.state_dict()


def test_cache_and_generate(pair):
    hf, ours = pair
    assert_cache_matches_full(ours, V)
    assert_greedy_matches(ours, hf, V)


def test_generate_across_the_longrope_switch(pair):
    """Prompts shorter than the original context of 16, generation past it: transformers' Phi-3 then
    recomputes the cache with the long factors, and so does lmkit's runner."""
    hf, ours = pair
    assert_greedy_matches(ours, hf, V, new=12, prompt_len=10)
    assert_greedy_matches(ours, hf, V, new=10, prompt_len=10, num_beams=2)  # beam search reorders the kept ids


def test_speculative_decoding_across_the_switch(pair):
    """Speculative decoding truncates the cache after rejected drafts; across the switch it still
    gives the greedy tokens (a weak draft: the target model with its last layer's FFN zeroed)."""
    import copy

    from lmkit.infer.generate import generate
    from lmkit.infer.speculative import speculative_generate

    hf, ours = pair
    draft = copy.deepcopy(ours)
    with torch.no_grad():
        draft.layers[-1].mlp.down_proj.weight.zero_()
    prompt = torch.randint(3, V, (10,), generator=torch.Generator().manual_seed(7)).tolist()
    want = generate(ours, [prompt], max_new_tokens=14, min_new_tokens=14).sequences
    got = speculative_generate(ours, draft, [prompt], max_new_tokens=14, min_new_tokens=14, num_draft_tokens=3)
    assert got.sequences == want and got.accepted < got.proposed


def test_lora_adapter_loads_in_peft(pair, tmp_path):
    pytest.importorskip("peft")
    hf, ours = pair
    assert_lora_loads_in_peft(hf, ours, V, tmp_path, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"),
                              r=2, alpha=4)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj"}
    assert saved["rank_pattern"]["model.layers.0.self_attn.qkv_proj"] == 6
    assert saved["alpha_pattern"]["model.layers.1.mlp.gate_up_proj"] == 8


def test_lmkit_built_phi3_loads_in_transformers(tmp_path):
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
                      rope_scaling="longrope", rope_scaling_factor=4.0, rope_original_max_seq_len=16,
                      rope_params={"short_factor": SHORT[:2], "long_factor": LONG[:2]}, partial_rotary_factor=0.5,
                      bos_token_id=1, eos_token_id=2, model_type="phi3")
    torch.manual_seed(0)
    lmkit_to_hf(DecoderLM(cfg).eval(), V, tmp_path)


def test_legacy_su_rope_and_top_level_original_length():
    """Phi-3 configs name longrope "su" and keep the original length at the top level (4096 by default)."""
    hf = hf_config().to_dict()
    hf.pop("original_max_position_embeddings")
    hf.update(max_position_embeddings=8192, rope_parameters=None,
              rope_scaling={"type": "su", "short_factor": SHORT, "long_factor": LONG})
    cfg = config_from_hf(hf)
    assert (cfg.rope_scaling, cfg.rope_original_max_seq_len, cfg.rope_scaling_factor) == ("longrope", 4096, 2.0)


def test_peft_trained_adapter_on_fused_layers_loads_in_lmkit(pair, tmp_path):
    """PEFT's own LoRA on qkv_proj / gate_up_proj (rank 4, one alpha_pattern entry) splits into lmkit's parts."""
    peft = pytest.importorskip("peft")
    import copy

    from lmkit.peft.peft_format import load_peft_adapter

    hf, ours = pair
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj", "o_proj"],
                             rank_pattern={"o_proj": 2}, alpha_pattern={"gate_up_proj": 3.0})
    tuned = peft.get_peft_model(copy.deepcopy(hf), config)
    perturb(tuned, scale=0.3, seed=4, only="lora_")
    tuned.save_pretrained(tmp_path / "adapter")
    again = load_peft_adapter(copy.deepcopy(ours), tmp_path / "adapter").eval()
    ids = torch.randint(3, V, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (again(ids).logits - tuned.eval()(input_ids=ids).logits).abs().max() <= 1e-4
