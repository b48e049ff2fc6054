"""Qwen3, Qwen3-MoE and OLMo 2 checkpoints against `transformers` (and LoRA against `peft`).

For each family, on a randomly initialised tiny model: logits both ways (an HF checkpoint
loads into lmkit, an lmkit checkpoint loads into `AutoModelForCausalLM`) on 40 tokens with
left padding, greedy `generate` token for token against `transformers.generate`, the KV-cache
path against the full forward, and a LoRA adapter saved by lmkit loading in
`peft.PeftModel`. Qwen3 uses a head_dim that differs from hidden/heads; Qwen3-MoE has one
dense and one sparse layer with experts narrower than the dense FFN.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.hub.pretrained import arch_module
from lmkit.hub.safetensors_io import write_state_dict
from lmkit.infer import generate
from lmkit.infer.fused_step import FusedDecoder
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.moe import MoE

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

V = 97
T = 40
FAMILIES = ["qwen3", "qwen3_moe", "olmo2"]
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
             initializer_range=0.2)  # wide logits: clear argmaxes for the greedy comparison


def hf_config(name: str, **kw):
    if name == "qwen3":
        return transformers.Qwen3Config(**SMALL, head_dim=12, attention_bias=True, **kw)
    if name == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**SMALL, head_dim=12, moe_intermediate_size=16, num_experts=4,
                                           num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0], **kw)
    return transformers.Olmo2Config(**SMALL, **kw)


def lmkit_config(name: str) -> ModelConfig:
    common = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
                  norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, model_type=name)
    if name == "qwen3":
        return ModelConfig(**common, head_dim=12, qk_norm="head", rope_theta=1e6, sliding_window=6)
    if name == "qwen3_moe":  # the first layer sparse, the second dense; experts not renormalised
        return ModelConfig(**common, head_dim=12, qk_norm="head", n_experts=4, n_experts_per_tok=2,
                           norm_topk_prob=False, moe_d_ff=16, moe_layers=[0])
    return ModelConfig(**common, head_dim=12, qk_norm="full", norm_position="sublayer_output", qkv_bias=True,
                       o_bias=True)


def perturb(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every parameter (norm gains and biases included) off its initial value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def batch():
    """[3, 40] ids with two left-padded rows, and their mask."""
    ids = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :17] = 0
    return ids, mask


def hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


def assert_parity(ours, hf):
    ids, mask = batch()
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
    assert (got - hf_logits(hf, ids, mask))[mask.bool()].abs().max() <= 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, HF model, its checkpoint directory, the lmkit model loaded from it)."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config(request.param), attn_implementation="eager").eval()
    perturb(hf)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, path, load_pretrained(path)


def test_hf_checkpoint_loads_with_same_logits(pair):
    name, hf, _, ours = pair
    cfg = ours.config
    assert cfg.model_type == name and cfg.qk_norm == ("full" if name == "olmo2" else "head")
    if name != "olmo2":
        assert cfg.head_dim == 12 and cfg.n_heads * cfg.head_dim != cfg.d_model
    if name == "qwen3_moe":
        assert cfg.moe_layers == [1] and [isinstance(b.mlp, MoE) for b in ours.layers] == [False, True]
        assert ours.layers[1].mlp.experts[0].up_proj.out_features == 16 and ours.layers[0].mlp.up_proj.out_features == 48
    assert_parity(ours, hf)


@pytest.mark.parametrize("name", FAMILIES)
def test_lmkit_checkpoint_loads_in_transformers(name, tmp_path):
    torch.manual_seed(0)
    ours = DecoderLM(lmkit_config(name)).eval()
    perturb(ours)
    save_pretrained(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == arch_module(name).HF_CLASSES[name]
    assert_parity(ours, hf)
    assert load_pretrained(tmp_path).config == ours.config  # and back through config.json


def test_greedy_generate_matches_transformers(pair):
    _, hf, _, ours = pair
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 19]]
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    rows = [row[: row.index(2) + 1] if 2 in row else row for row in ref[:, t:].tolist()]
    assert [list(s) for s in generate(ours, prompts, max_new_tokens=12).sequences] == rows


def test_kv_cache_path_equals_full_forward(pair):
    _, _, _, ours = pair
    ids, mask = batch()
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        cache = ours.make_cache(3, T)
        steps = [ours(ids[:, :30], attention_mask=mask[:, :30], kv_cache=cache).logits]
        for i in range(30, T):
            steps.append(ours(ids[:, i:i + 1], attention_mask=mask[:, :i + 1], kv_cache=cache).logits)
    cached = torch.cat(steps, dim=1)
    assert (cached - full)[mask.bool()].abs().max() <= 1e-5


def test_fused_decode_step_refuses_these_families(pair):
    name, _, _, ours = pair
    why = FusedDecoder.unsupported(ours, T)
    assert why == {"qwen3": "q/k norm", "qwen3_moe": "mixture-of-experts layers",
                   "olmo2": "sublayer_output norm placement"}[name]


def test_lora_adapter_loads_in_peft(pair, tmp_path):
    peft = pytest.importorskip("peft")
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_lora

    name, _, path, _ = pair
    # Qwen3-MoE's experts are fused parameters in transformers 5, not Linear modules PEFT can adapt
    targets = ("q_proj", "k_proj", "v_proj", "o_proj") + (() if name == "qwen3_moe" else ("gate_proj", "down_proj"))
    ours = inject_lora(load_pretrained(path), LoraConfig(r=4, alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_lora(ours, tmp_path / "adapter", base_model_name_or_path=str(path))
    base = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    pm = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids, mask = batch()
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
        ref = pm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        with pm.disable_adapter():
            plain = pm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    keep = mask.bool()
    assert (got - ref)[keep].abs().max() <= 1e-4
    assert (ref - plain)[keep].abs().max() > 1e-2  # the adapter really took part


def test_lora_on_moe_experts_keeps_lmkit_names(pair, tmp_path):
    """PEFT has no per-expert Linear to adapt in transformers 5: such an adapter is marked lmkit-only
    (PEFT would otherwise load it with the expert updates silently missing) and reloads in lmkit."""
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import LMKIT_NAMES_KEY, load_lora, save_lora

    name, _, path, _ = pair
    if name != "qwen3_moe":
        pytest.skip("dense family")
    ours = inject_lora(load_pretrained(path), LoraConfig(r=2, target_modules=("down_proj",)))
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_(generator=torch.Generator().manual_seed(3))
    save_lora(ours, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())[LMKIT_NAMES_KEY] is True
    again = load_lora(load_pretrained(path), tmp_path / "a")
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits)


def test_qwen3_moe_fused_transformers5_layout_loads(tmp_path):
    """transformers >= 5 holds the experts fused in memory; that layout loads too."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config("qwen3_moe"), attn_implementation="eager").eval()
    perturb(hf)
    assert any(k.endswith("experts.gate_up_proj") for k in hf.state_dict())
    write_state_dict({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path)
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    assert_parity(load_pretrained(tmp_path), hf)


def test_qwen3_sliding_window_layers_load_with_same_logits(tmp_path):
    """use_sliding_window with every layer past max_window_layers: the 6-token window bites at 40 tokens."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(
        hf_config("qwen3", use_sliding_window=True, sliding_window=6, max_window_layers=0),
        attn_implementation="eager").eval()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.sliding_window == 6
    assert_parity(ours, hf)


def test_config_translation_details():
    arch = arch_module("qwen3")
    qwen3 = hf_config("qwen3").to_dict()
    qwen3.pop("head_dim")
    assert arch.config_from_hf(qwen3).head_dim == 128  # transformers' Qwen3 default, not hidden/heads
    moe = hf_config("qwen3_moe").to_dict()
    moe.pop("num_local_experts", None)  # published checkpoints spell it num_experts
    moe.update(num_hidden_layers=6, num_experts=4, decoder_sparse_step=2, mlp_only_layers=[3])
    cfg = arch.config_from_hf(moe)
    assert cfg.n_experts == 4 and cfg.moe_layers == [1, 5] and cfg.moe_d_ff == 16 and cfg.norm_topk_prob
    back = arch.config_to_hf(cfg)
    assert back["decoder_sparse_step"] == 1 and back["mlp_only_layers"] == [0, 2, 3, 4]
    assert "sliding_window" not in arch.config_to_hf(lmkit_config("olmo2"))
    with pytest.raises(ConfigError, match="decoder_sparse_step"):
        arch.config_from_hf({**moe, "decoder_sparse_step": 0})


def test_unrepresentable_models_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="qk_norm"):
        save_pretrained(DecoderLM(ModelConfig(**{**lmkit_config("qwen3").to_dict(), "qk_norm": None})), tmp_path)
    with pytest.raises(ConfigError, match="sliding window"):
        save_pretrained(DecoderLM(ModelConfig(**{**lmkit_config("olmo2").to_dict(), "sliding_window": 4})), tmp_path)
    with pytest.raises(ConfigError, match="mixtral has experts"):
        save_pretrained(DecoderLM(ModelConfig(**{**lmkit_config("qwen3_moe").to_dict(), "model_type": "mixtral",
                                                 "qk_norm": None})), tmp_path)


def test_moe_layers_and_expert_size():
    base = dict(vocab_size=V, d_model=16, n_layers=3, n_heads=2, d_ff=32, n_experts=2, n_experts_per_tok=1)
    cfg = ModelConfig(**base, moe_layers=[2, 0, 2], moe_d_ff=8)
    assert cfg.moe_layers == [0, 2] and [cfg.is_moe_layer(i) for i in range(3)] == [True, False, True]
    assert ModelConfig(**base, moe_layers=[0, 1, 2]).moe_layers is None  # every layer: the default
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    model = DecoderLM(cfg)
    assert [type(b.mlp).__name__ for b in model.layers] == ["MoE", "FeedForward", "MoE"]
    assert model.layers[0].mlp.experts[1].down_proj.in_features == 8 and model.layers[1].mlp.down_proj.in_features == 32
    from lmkit.train.memory import ParamCount

    for c in [cfg, ModelConfig(**{**cfg.to_dict(), "ffn_bias": True})] + [lmkit_config(n) for n in FAMILIES]:
        assert ParamCount.of(c).total == sum(p.numel() for p in DecoderLM(c).parameters())
    with pytest.raises(ConfigError, match="moe_layers"):
        ModelConfig(**base, moe_layers=[3])
    with pytest.raises(ConfigError, match="moe_d_ff"):
        ModelConfig(**base, moe_d_ff=0)
