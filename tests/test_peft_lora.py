"""LoRA against Hugging Face `peft` on a randomly initialised tiny Llama (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub import load_pretrained
from lmkit.peft.lora import (
    LoraConfig,
    LoraLinear,
    disable_adapters,
    inject_lora,
    load_lora_state_dict,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    set_adapter,
    trainable_parameters,
    unload_lora,
    unmerge_lora,
)
from lmkit.peft.peft_format import from_peft_keys, load_lora, save_lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

V = 97
TARGETS = ("q_proj", "v_proj", "down_proj")


def hf_config(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(hf_config(attention_bias=True)).save_pretrained(d)
    return d


def hf_model(base_dir):
    return transformers.LlamaForCausalLM.from_pretrained(base_dir).eval()


def ids():
    return torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(5))


def randomize(tensors, seed=3, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g) * scale)


def logits(model, x):
    with torch.no_grad():
        out = model(input_ids=x) if not isinstance(model, torch.nn.Module) or hasattr(model, "peft_config") \
            else model(x)
    return out.logits


@pytest.mark.parametrize("rslora", [False, True])
def test_same_base_same_ab_same_logits_as_peft(base_dir, rslora):
    pm = peft.get_peft_model(
        hf_model(base_dir),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), use_rslora=rslora, task_type="CAUSAL_LM"),
    ).eval()
    psd = peft.get_peft_model_state_dict(pm)
    randomize(psd.values())  # non-zero B: the update really contributes
    ours = inject_lora(load_pretrained(base_dir), LoraConfig(r=4, alpha=8, target_modules=TARGETS, use_rslora=rslora))
    load_lora_state_dict(ours, from_peft_keys(ours, psd))
    x = ids()
    ref = logits(pm, x)
    got = logits(ours, x)
    assert (got - ref).abs().max() <= 1e-5
    with disable_adapters(ours):
        base = logits(ours, x)
    assert (got - base).abs().max() > 1e-2  # the adapter changes the output


def test_init_like_peft(base_dir):
    ours = inject_lora(load_pretrained(base_dir), LoraConfig(r=4, alpha=8))
    layer = ours.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLinear)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    bound = 1 / 32 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=32 -> U(-1/sqrt(32), 1/sqrt(32))
    a = layer.lora_A["default"].weight
    assert a.abs().max() <= bound and a.std() > bound / 3
    x = ids()
    with disable_adapters(ours):
        base = logits(ours, x)
    assert torch.equal(logits(ours, x), base)  # B = 0: training starts at the base model


def test_lmkit_adapter_loads_in_peft_and_back(base_dir, tmp_path):
    cfg = LoraConfig(r=4, alpha=16, target_modules=TARGETS, bias="lora_only", modules_to_save=("lm_head",))
    ours = inject_lora(load_pretrained(base_dir), cfg)
    randomize([p for p in ours.parameters() if p.requires_grad], seed=7)
    save_lora(ours, tmp_path / "a", base_model_name_or_path=str(base_dir))
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM" and saved["r"] == 4
    assert sorted(saved["target_modules"]) == sorted(TARGETS)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys

    pm = peft.PeftModel.from_pretrained(hf_model(base_dir), tmp_path / "a").eval()
    x = ids()
    assert (logits(pm, x) - logits(ours, x)).abs().max() <= 1e-5

    # and PEFT's own save loads back into a fresh lmkit model
    pm.save_pretrained(tmp_path / "b")
    fresh = load_lora(load_pretrained(base_dir), tmp_path / "b")
    assert (logits(fresh, x) - logits(pm, x)).abs().max() <= 1e-5


def test_peft_trained_adapter_loads_in_lmkit(base_dir, tmp_path):
    pm = peft.get_peft_model(hf_model(base_dir), peft.LoraConfig(
        r=2, lora_alpha=5, target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"], use_rslora=True,
        task_type="CAUSAL_LM")).eval()
    randomize(peft.get_peft_model_state_dict(pm).values(), seed=11)
    pm.save_pretrained(tmp_path / "p")
    ours = load_lora(load_pretrained(base_dir), tmp_path / "p")
    x = ids()
    assert (logits(ours, x) - logits(pm, x)).abs().max() <= 1e-5


def test_merge_unmerge(base_dir):
    ours = inject_lora(load_pretrained(base_dir), LoraConfig(r=4, alpha=8, target_modules=("all-linear",)))
    base_weights = {k: v.clone() for k, v in ours.state_dict().items() if "lora_" not in k}
    randomize([p for p in ours.parameters() if p.requires_grad])
    x = ids()
    unmerged = logits(ours, x)
    merge_lora(ours)
    assert (logits(ours, x) - unmerged).abs().max() <= 1e-5
    with disable_adapters(ours):  # unmerges inside, merges again after
        assert (logits(ours, x) - logits_of_base(base_dir, x)).abs().max() <= 1e-5
    assert (logits(ours, x) - unmerged).abs().max() <= 1e-5
    unmerge_lora(ours)
    for k, v in ours.state_dict().items():
        if k in base_weights:
            assert (v - base_weights[k]).abs().max() <= 1e-6, k
    assert (logits(ours, x) - unmerged).abs().max() <= 1e-5
    # merge + unload gives a plain model equal to the adapter model, loadable by transformers
    merged = unload_lora(ours)
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert (logits(merged, x) - unmerged).abs().max() <= 1e-5


def logits_of_base(base_dir, x):
    return logits(load_pretrained(base_dir), x)


def test_trainable_count_closed_form(base_dir):
    for targets in [("q_proj", "v_proj"), ("all-linear",), ("k_proj", "down_proj")]:
        model = load_pretrained(base_dir)
        total_before = sum(p.numel() for p in model.parameters())
        shapes = [(m.in_features, m.out_features) for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head"
                  and (targets == ("all-linear",) or n.split(".")[-1] in targets)]
        r = 3
        inject_lora(model, LoraConfig(r=r, target_modules=targets))
        trainable, total = trainable_parameters(model)
        assert trainable == sum(r * (i + o) for i, o in shapes)
        assert total == total_before + trainable
        # PEFT agrees
        pm = peft.get_peft_model(hf_model(base_dir), peft.LoraConfig(
            r=r, target_modules=list(targets) if targets != ("all-linear",) else "all-linear", task_type="CAUSAL_LM"))
        assert pm.get_nb_trainable_parameters()[0] == trainable


def test_named_adapters_switch(base_dir, tmp_path):
    model = load_pretrained(base_dir)
    inject_lora(model, LoraConfig(r=2, target_modules=("q_proj",)), adapter_name="one")
    randomize([p for p in model.parameters() if p.requires_grad], seed=1)
    inject_lora(model, LoraConfig(r=4, target_modules=("q_proj", "v_proj")), adapter_name="two")
    randomize([p for p in model.parameters() if p.requires_grad], seed=2)
    x = ids()
    out_two = logits(model, x)
    set_adapter(model, "one")
    out_one = logits(model, x)
    assert (out_one - out_two).abs().max() > 1e-2
    # only the active adapter trains
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".one." in n for n in names)
    save_lora(model, tmp_path / "one", adapter_name="one")
    fresh = load_lora(load_pretrained(base_dir), tmp_path / "one", adapter_name="x")
    assert (logits(fresh, x) - out_one).abs().max() <= 1e-6
    with pytest.raises(ConfigError, match="no LoRA adapter named 'three'"):
        set_adapter(model, "three")


def test_base_frozen_and_gradients_reach_only_lora(base_dir):
    model = inject_lora(load_pretrained(base_dir).train(), LoraConfig(r=2))
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids()
    for _ in range(3):
        loss = model(x, labels=x).loss
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in n), n
        opt.step()
        opt.zero_grad()
    for k, v in model.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k]), k


def test_bad_inputs(base_dir, tmp_path):
    model = load_pretrained(base_dir)
    with pytest.raises(ConfigError, match=r"match no linear layer.*available: \[.*'q_proj'"):
        inject_lora(model, LoraConfig(target_modules=("query",)))
    with pytest.raises(ConfigError, match="larger than"):
        inject_lora(model, LoraConfig(r=40))
    assert not any(isinstance(m, LoraLinear) for m in model.modules())  # nothing half-done
    with pytest.raises(ConfigError, match="r=0"):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="bias"):
        LoraConfig(bias="some")
    # an adapter for another architecture/size
    torch.manual_seed(1)
    other = tmp_path / "big"
    transformers.LlamaForCausalLM(hf_config(hidden_size=48, num_attention_heads=4)).save_pretrained(other)
    big = inject_lora(load_pretrained(other), LoraConfig(r=2))
    save_lora(big, tmp_path / "big_adapter")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_lora(model, tmp_path / "big_adapter")
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=1,
                                                         n_head=4)).save_pretrained(gpt2)
    pg = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(gpt2),
                             peft.LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    pg.save_pretrained(tmp_path / "gpt2_adapter")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_lora(model, tmp_path / "gpt2_adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_lora(model, tmp_path / "empty")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(r=st.integers(1, 8), alpha=st.floats(0.5, 64), rslora=st.booleans(), seed=st.integers(0, 1000))
def test_merge_equals_adapter_property(r, alpha, rslora, seed):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(12, 9)
    w0 = lin.weight.detach().clone()
    layer = LoraLinear(lin)
    layer.add_adapter("a", r, alpha, use_rslora=rslora)
    torch.nn.init.normal_(layer.lora_B["a"].weight)
    x = torch.randn(5, 12)
    scale = alpha / (r ** 0.5 if rslora else r)
    expected = lin(x) + (x @ layer.lora_A["a"].weight.T @ layer.lora_B["a"].weight.T) * scale
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)
        layer.merge("a")
        assert torch.allclose(layer(x), expected, atol=1e-4)
        layer.unmerge()
    assert (lin.weight - w0).abs().max() <= 1e-5


def test_mark_only_lora_trainable_bias_modes(base_dir):
    model = inject_lora(load_pretrained(base_dir), LoraConfig(r=2, bias="all"))
    mark_only_lora_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "layers.0.self_attn.k_proj.bias" in trainable and "layers.0.self_attn.q_proj.base_layer.bias" in trainable
    sd = lora_state_dict(model)
    assert "layers.0.self_attn.k_proj.bias" in sd and "layers.0.self_attn.q_proj.base_layer.bias" in sd


def test_gpt2_keeps_lmkit_names_and_tied_head_refuses_merge(tmp_path):
    """HF GPT-2 fuses q/k/v into one transposed Conv1D, so its adapters keep lmkit's names
    (flagged in adapter_config.json); merging into a tied lm_head would change the embedding."""
    from lmkit.models.decoder import DecoderLM
    from lmkit.models.presets import preset

    cfg = preset("gpt2-tiny", vocab_size=50, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=32)
    torch.manual_seed(0)
    model = inject_lora(DecoderLM(cfg), LoraConfig(r=2, target_modules=("q_proj", "o_proj", "lm_head")))
    randomize([p for p in model.parameters() if p.requires_grad])
    save_lora(model, tmp_path / "g")
    assert json.loads((tmp_path / "g" / "adapter_config.json").read_text())["lmkit_module_names"] is True
    torch.manual_seed(0)
    again = load_lora(DecoderLM(cfg), tmp_path / "g")
    x = torch.randint(0, 50, (1, 6))
    assert torch.equal(logits(again, x), logits(model, x))
    with pytest.raises(ConfigError, match="tied embeddings"):
        merge_lora(model)
