"""Prompt tuning, P-tuning and prefix tuning against Hugging Face PEFT on a tiny random Llama.

Same base weights (saved by transformers, loaded by lmkit.hub), the same prompt / encoder
weights copied from PEFT into lmkit: same trainable-parameter counts, same per-layer
past key/value shapes, and the same logits for the real tokens.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lmkit.hub import load_pretrained  # noqa: E402
from lmkit.peft.method_common import count_trainable  # noqa: E402
from lmkit.peft.p_tuning import PTuningConfig, apply_ptuning, ptuning_param_count  # noqa: E402
from lmkit.peft.prefix_tuning import PrefixTuningConfig, apply_prefix, prefix_param_count  # noqa: E402
from lmkit.peft.prompt_tuning import PromptTuningConfig, apply_prompt, prompt_param_count  # noqa: E402

N_VIRTUAL = 5


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(d)
    return d


def hf_model(hf_dir):
    return transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def ours(hf_dir):
    return load_pretrained(hf_dir).float().eval()


IDS = torch.tensor([[5, 9, 3, 17, 2, 41, 7], [8, 1, 60, 33, 12, 4, 9]])


def test_prompt_tuning_matches_peft(hf_dir):
    pcfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL,
                                   prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    pm = peft.get_peft_model(hf_model(hf_dir), pcfg).eval()
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    peft_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)

    cfg = PromptTuningConfig(n_virtual_tokens=N_VIRTUAL, init="vocab")
    base = ours(hf_dir)
    model = apply_prompt(base, cfg).eval()
    assert count_trainable(model) == peft_trainable == prompt_param_count(base.config, cfg)
    model.prompt_encoder.load_state_dict(pm.prompt_encoder["default"].state_dict())
    with torch.no_grad():
        ref = pm(input_ids=IDS).logits[:, N_VIRTUAL:]
        got = model(IDS).logits
        plain = ours(hf_dir)(IDS).logits
    assert got.shape == ref.shape
    assert not torch.allclose(got, plain, atol=1e-3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_prompt_tuning_vocab_init_counts_match_peft(hf_dir):
    pcfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7,
                                   prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB)
    pm = peft.get_peft_model(hf_model(hf_dir), pcfg)
    model = apply_prompt(ours(hf_dir), PromptTuningConfig(n_virtual_tokens=7, init="vocab"))
    assert count_trainable(model) == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    # both initialise every virtual token from a row of the embedding table
    table = model.base_model.embed_tokens.weight
    for row in model.prompt_encoder.embedding.weight:
        assert (table == row).all(-1).any()


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_p_tuning_matches_peft(hf_dir, encoder):
    pcfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=24,
                                    encoder_reparameterization_type=encoder.upper())
    pm = peft.get_peft_model(hf_model(hf_dir), pcfg).eval()
    peft_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)

    cfg = PTuningConfig(n_virtual_tokens=N_VIRTUAL, encoder=encoder, hidden_size=24)
    base = ours(hf_dir)
    model = apply_ptuning(base, cfg).eval()
    assert count_trainable(model) == peft_trainable == ptuning_param_count(base.config, cfg)
    model.prompt_encoder.load_state_dict(pm.prompt_encoder["default"].state_dict(), strict=False)
    with torch.no_grad():
        ref = pm(input_ids=IDS).logits[:, N_VIRTUAL:]
        got = model(IDS).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("projection", [True, False])
def test_prefix_tuning_matches_peft(hf_dir, projection):
    pcfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL,
                                   prefix_projection=projection, encoder_hidden_size=24)
    pm = peft.get_peft_model(hf_model(hf_dir), pcfg).eval()
    with torch.no_grad():
        for p in pm.prompt_encoder["default"].parameters():
            p.normal_(0, 0.5)
    peft_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)

    cfg = PrefixTuningConfig(n_virtual_tokens=N_VIRTUAL, projection=projection, hidden_size=24)
    base = ours(hf_dir)
    model = apply_prefix(base, cfg).eval()
    assert count_trainable(model) == peft_trainable == prefix_param_count(base.config, cfg)
    model.prefix_tuning.load_state_dict(pm.prompt_encoder["default"].state_dict(), strict=False)

    # the per-layer past key/value shapes PEFT builds equal our prefixes'
    past = pm.get_prompt(batch_size=2)
    kv = model.prefix_tuning()  # [L, 2, Hkv, p, hd]
    for i in range(base.config.n_layers):
        layer = past.layers[i] if hasattr(past, "layers") else None
        pk = layer.keys if layer is not None else past[i][0]
        assert tuple(pk.shape) == (2, *kv[i, 0].shape)
        torch.testing.assert_close(pk[0], kv[i, 0])

    with torch.no_grad():
        ref = pm(input_ids=IDS).logits
        got = model(IDS).logits
        plain = ours(hf_dir)(IDS).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the prefix really changes the output
