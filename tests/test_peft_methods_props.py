"""Properties of the PEFT methods: prefix MLP dropped after training changes nothing,
prefix-tuned generation with a KV cache equals full recomputation, AdapterDrop with k=0 is
the full adapter model (and k=L the base), save/load round-trips, registry, bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import CheckpointError, ConfigError
from lmkit.infer.generate import generate
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.models.encoder import EncoderLM
from lmkit.peft import method_io
from lmkit.peft.adapter import AdapterConfig, adapter_sites, apply_adapter, remove_adapters
from lmkit.peft.adapter_drop import AdapterDropConfig, apply_adapterdrop, set_adapter_drop
from lmkit.peft.adapter_fusion import FusionConfig, apply_fusion
from lmkit.peft.bitfit import BitFitConfig, apply_bitfit
from lmkit.peft.method_common import count_trainable
from lmkit.peft.p_tuning import PTuningConfig, apply_ptuning, finalize_ptuning, ptuning_param_count
from lmkit.peft.prefix_tuning import PrefixTuningConfig, apply_prefix, finalize_prefix, prefix_param_count
from lmkit.peft.probing import pool
from lmkit.peft.prompt_tuning import PromptTuningConfig, apply_prompt
from lmkit.peft.registry import METHODS, get_method, method_names

V = 32


def decoder(seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, initializer_range=0.2)
    cfg.update(kw)
    return DecoderLM(ModelConfig(**cfg)).eval()


def encoder(seed: int = 0) -> EncoderLM:
    torch.manual_seed(seed)
    return EncoderLM(ModelConfig(
        arch="encoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64,
        norm="layernorm", norm_position="post", activation="gelu", gated_ffn=False, position="learned",
        qkv_bias=True, o_bias=True, ffn_bias=True, initializer_range=0.2,
    ), heads=("pooler",)).eval()


@torch.no_grad()
def perturb_trainable(model, scale: float = 0.3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g) * scale)


IDS = torch.tensor([[3, 7, 1, 9, 4, 4, 2, 8], [5, 5, 6, 1, 0, 2, 3, 11]])


# ---- prefix tuning -------------------------------------------------------------------------
def test_prefix_finalize_drops_mlp_and_keeps_outputs():
    cfg = PrefixTuningConfig(n_virtual_tokens=4, hidden_size=16)
    base = decoder()
    model = apply_prefix(base, cfg)
    perturb_trainable(model)
    assert count_trainable(model) == prefix_param_count(base.config, cfg)
    with torch.no_grad():
        before = model(IDS).logits
    finalize_prefix(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["prefix_tuning.prefix"] and cfg.finalized
    assert count_trainable(model) == prefix_param_count(base.config, cfg) == 2 * 2 * 4 * 32
    with torch.no_grad():
        after = model(IDS).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("method", ["prefix", "ptuning2", "adapter", "adapterdrop"])
def test_generation_with_kv_cache_equals_full_recompute(method):
    base = decoder()
    opts = {"n_virtual_tokens": 3} if method in ("prefix", "ptuning2") else {}
    model = METHODS[method].apply(base, METHODS[method].config_cls(**opts))
    perturb_trainable(model)
    prompts = [[3, 7, 1, 9, 4], [5, 6, 2]]  # different lengths: left padding inside generate
    out = generate(model, prompts, max_new_tokens=6)
    for prompt, new in zip(prompts, out.sequences):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(6):  # greedy decoding, recomputing the whole sequence every step
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert new == seq[len(prompt):]
    # logits: prefill + one token at a time through a KVCache == one full forward
    cache = base.make_cache(2, 16)
    with torch.no_grad():
        full = model(IDS).logits
        parts = [model(IDS[:, :4], kv_cache=cache).logits]
        for t in range(4, IDS.shape[1]):
            parts.append(model(IDS[:, t:t + 1], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_prefix_attends_with_padding_mask():
    """A left-padded row gives the same logits for its real tokens as the row alone."""
    model = apply_prefix(decoder(), PrefixTuningConfig(n_virtual_tokens=3))
    perturb_trainable(model)
    ids = torch.tensor([[0, 0, 3, 7, 1], [4, 5, 6, 2, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = model(ids[:1, 2:]).logits
    torch.testing.assert_close(batched[0, 2:], alone[0], atol=1e-5, rtol=1e-5)


# ---- prompt tuning / P-tuning ----------------------------------------------------------------
def test_prompt_tuning_kv_cache_continuation_equals_full():
    model = apply_prompt(decoder(), PromptTuningConfig(n_virtual_tokens=4, init="random")).eval()
    cache = model.make_cache(2, 16)
    with torch.no_grad():
        full = model(IDS).logits
        parts = [model(IDS[:, :5], kv_cache=cache).logits]
        for t in range(5, IDS.shape[1]):
            parts.append(model(IDS[:, t:t + 1], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_virtual_token_generation_with_kv_cache_equals_full_recompute(method):
    model = METHODS[method].apply(decoder(), METHODS[method].config_cls(n_virtual_tokens=3)).eval()
    perturb_trainable(model)
    prompts = [[3, 7, 1, 9, 4], [5, 6, 2]]
    out = generate(model, prompts, max_new_tokens=5)
    for prompt, new in zip(prompts, out.sequences):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(5):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert new == seq[len(prompt):]


def test_prompt_init_text_and_vocab():
    base = decoder()
    table = base.embed_tokens.weight.detach().clone()
    model = apply_prompt(base, PromptTuningConfig(n_virtual_tokens=5, init="text", init_token_ids=[7, 3]))
    torch.testing.assert_close(model.prompt_encoder.embedding.weight.detach(), table[[7, 3, 7, 3, 7]])

    class Tok:
        def encode(self, text):
            return [ord(c) % V for c in text]

    model = apply_prompt(decoder(), PromptTuningConfig(n_virtual_tokens=2, init="text", init_text="ab"), tokenizer=Tok())
    torch.testing.assert_close(model.prompt_encoder.embedding.weight.detach(), table[[ord("a") % V, ord("b") % V]])
    with pytest.raises(ConfigError, match="tokenizer"):
        apply_prompt(decoder(), PromptTuningConfig(n_virtual_tokens=2, init="text", init_text="ab"))
    with pytest.raises(ConfigError, match="init_token_ids"):
        PromptTuningConfig(init="text")
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        apply_prompt(decoder(), PromptTuningConfig(init="text", init_token_ids=[V + 1]))


def test_p_tuning_finalize_keeps_outputs():
    cfg = PTuningConfig(n_virtual_tokens=4, encoder="lstm", hidden_size=8)
    base = decoder()
    model = apply_ptuning(base, cfg).eval()
    with torch.no_grad():
        before = model(IDS).logits
    finalize_ptuning(model)
    assert count_trainable(model) == ptuning_param_count(base.config, cfg) == 4 * 32
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, before)


@settings(max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=2, max_size=3),
    before=st.integers(0, 3), after=st.integers(0, 2), left=st.booleans(),
)
def test_virtual_tokens_in_a_padded_batch_equal_each_row_alone(lengths, before, after, left):
    if before + after == 0:
        before = 1
    cfg = PTuningConfig(n_virtual_tokens=before + after, encoder="mlp", hidden_size=8, template=(before, after))
    model = apply_ptuning(decoder(), cfg).eval()
    t = max(lengths)
    g = torch.Generator().manual_seed(sum(lengths))
    ids = torch.randint(1, V, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, t - n:] = 1
        else:
            mask[i, :n] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            real = mask[i].bool()
            alone = model(ids[i:i + 1, real]).logits[0]
            torch.testing.assert_close(batched[i, real], alone, atol=1e-4, rtol=1e-4)


# ---- adapters, AdapterDrop ---------------------------------------------------------------------
def test_adapterdrop_k0_is_the_full_adapter_model_and_kL_the_base():
    base = decoder()
    with torch.no_grad():
        plain = base(IDS).logits
    model = apply_adapter(base, AdapterConfig(bottleneck=8))
    perturb_trainable(model)
    with torch.no_grad():
        full = model(IDS).logits
    assert not torch.allclose(full, plain)
    apply_adapterdrop(model, AdapterDropConfig(drop_layers=0, stochastic=True))
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, full)
        set_adapter_drop(model, 2)
        assert torch.equal(model(IDS).logits, plain)
        set_adapter_drop(model, 1)
        drop1 = model(IDS).logits
    # independent construction of "no adapter in layer 0": zero its adapters' up-projections
    set_adapter_drop(model, 0)
    with torch.no_grad():
        for site in adapter_sites(model):
            if site.layer_index == 0:
                site.adapters["default"].up.weight.zero_()
                site.adapters["default"].up.bias.zero_()
        torch.testing.assert_close(model(IDS).logits, drop1, atol=1e-6, rtol=1e-6)


def test_adapter_zero_init_is_identity_and_removable():
    base = decoder()
    with torch.no_grad():
        plain = base(IDS).logits
    model = apply_adapter(base, AdapterConfig(init_std=0.0))
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, plain)
    perturb_trainable(model)
    remove_adapters(model)
    assert not adapter_sites(model)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, plain)


def test_stochastic_adapterdrop_varies_k_in_training_only():
    model = apply_adapterdrop(decoder(n_layers=2), AdapterDropConfig(drop_layers=1, stochastic=True))
    model.train()
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        model(IDS)
        seen.add(tuple(s.dropped for s in adapter_sites(model)))
    assert len(seen) == 2  # k' = 0 and k' = 1
    model.eval()
    model(IDS)
    assert [s.dropped for s in adapter_sites(model)] == [True, True, False, False]


def test_specialised_adapterdrop_has_no_adapters_below_k():
    model = apply_adapterdrop(decoder(), AdapterDropConfig(drop_layers=1))
    assert {s.layer_index for s in adapter_sites(model) if s.adapters} == {1}


# ---- save / load -------------------------------------------------------------------------
ROUND_TRIP = [
    ("adapter", {"bottleneck": 4}, "dec"),
    ("adapterdrop", {"drop_layers": 1}, "dec"),
    ("prefix", {"n_virtual_tokens": 3}, "dec"),
    ("prompt", {"n_virtual_tokens": 3}, "dec"),
    ("ptuning", {"n_virtual_tokens": 3, "encoder": "lstm", "hidden_size": 8}, "dec"),
    ("ptuning2", {"n_virtual_tokens": 3, "num_labels": 3}, "enc"),
    ("bitfit", {"add_missing_bias": True}, "dec"),
    ("bitfit", {"train_norms": True}, "enc"),
    ("probe", {"num_labels": 3, "pooling": "mean"}, "enc"),
]


@pytest.mark.parametrize("name,options,kind", ROUND_TRIP, ids=[f"{r[0]}-{r[2]}" for r in ROUND_TRIP])
def test_save_load_round_trip(name, options, kind, tmp_path):
    make = decoder if kind == "dec" else encoder
    spec = get_method(name)
    cfg = spec.config_cls(**options)
    model = spec.apply(make(), cfg).eval()
    perturb_trainable(model)
    method_io.save_method(model, tmp_path / "m", name, cfg)
    meta = json.loads((tmp_path / "m" / method_io.CONFIG_NAME).read_text())
    assert meta["method"] == name and meta["parameters"] == spec.param_count(model.config, cfg)
    loaded = method_io.load_method(make(), tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, atol=0, rtol=0)
    assert method_io.method_state_dict(loaded).keys() == method_io.method_state_dict(model).keys()


def test_finalized_prefix_and_fusion_round_trip(tmp_path):
    cfg = PrefixTuningConfig(n_virtual_tokens=3)
    model = apply_prefix(decoder(), cfg).eval()
    perturb_trainable(model)
    finalize_prefix(model)
    method_io.save_method(model, tmp_path / "p", "prefix", cfg)
    loaded = method_io.load_method(decoder(), tmp_path / "p").eval()
    assert not hasattr(loaded.prefix_tuning, "transform")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)

    model = decoder()
    for name in ("a", "b"):
        acfg = AdapterConfig(name=name, bottleneck=4)
        apply_adapter(model, acfg)
        perturb_trainable(model, seed=ord(name))
        method_io.save_method(model, tmp_path / name, "adapter", acfg)
    fcfg = FusionConfig(adapters=["a", "b"])
    apply_fusion(model, fcfg)
    perturb_trainable(model, scale=0.1)
    method_io.save_method(model, tmp_path / "f", "fusion", fcfg)
    fresh = decoder()
    for name in ("a", "b", "f"):
        fresh = method_io.load_method(fresh, tmp_path / name)
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, model(IDS).logits)


def test_load_errors(tmp_path):
    cfg = AdapterConfig(bottleneck=4)
    model = apply_adapter(decoder(), cfg)
    method_io.save_method(model, tmp_path / "m", "adapter", cfg)
    with pytest.raises(CheckpointError, match="another architecture"):
        method_io.load_method(decoder(d_model=64), tmp_path / "m")
    with pytest.raises(CheckpointError, match="missing"):
        method_io.load_method(decoder(), tmp_path / "nowhere")
    (tmp_path / "m" / method_io.WEIGHTS_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        method_io.load_method(decoder(), tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.tmp"))


# ---- registry, errors ---------------------------------------------------------------------------
def test_registry_lists_every_method_and_configs_round_trip():
    assert set(METHODS) >= {"adapter", "fusion", "adapterdrop", "prefix", "prompt", "ptuning", "ptuning2", "bitfit", "probe"}
    assert {"lora", "qlora", "adalora"} <= set(method_names())
    for name, spec in list(METHODS.items()):
        cfg = spec.config_cls(adapters=["a", "b"]) if name == "fusion" else spec.config_cls()
        again = spec.config_cls.from_json(cfg.to_json())
        assert again == cfg and again.method == name
    with pytest.raises(ConfigError, match="choose one of"):
        get_method("no-such-method")


def test_lazy_lora_lookup():
    if importlib.util.find_spec("lmkit.peft.lora") is None:
        with pytest.raises(ConfigError):
            get_method("lora")
        return
    try:
        spec = get_method("lora")
    except ConfigError as exc:  # the LoRA module exists but uses other names
        pytest.skip(str(exc))
    assert callable(spec.apply) and spec.module == "lmkit.peft.lora"


def test_bitfit_without_biases_is_a_clear_error():
    with pytest.raises(ConfigError, match="add_missing_bias"):
        apply_bitfit(decoder(), BitFitConfig())
    model = apply_bitfit(decoder(), BitFitConfig(add_missing_bias=True))
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, decoder()(IDS).logits)  # zero biases change nothing


def test_bad_configs_and_misuse():
    with pytest.raises(ConfigError, match="adapters"):
        apply_fusion(decoder(), FusionConfig(adapters=["x", "y"]))
    with pytest.raises(ConfigError, match="at least two"):
        FusionConfig(adapters=["x"])
    model = apply_adapter(decoder(), AdapterConfig())
    with pytest.raises(ConfigError, match="already exists"):
        apply_adapter(model, AdapterConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        apply_adapter(decoder(), AdapterConfig(layers=[5]))
    with pytest.raises(ConfigError, match="template"):
        PTuningConfig(n_virtual_tokens=4, template=(1, 1))
    with pytest.raises(ConfigError, match="positions"):
        AdapterConfig(positions=("attn", "nowhere"))
    with pytest.raises(ConfigError, match="already has"):
        apply_prefix(apply_prefix(decoder(), PrefixTuningConfig()), PrefixTuningConfig())
    with pytest.raises(ConfigError, match="LMkit|lmkit"):
        apply_adapter(torch.nn.Linear(2, 2), AdapterConfig())


@given(st.integers(-5, 0))
def test_non_positive_sizes_are_rejected(n):
    for cls, field in ((PrefixTuningConfig, "n_virtual_tokens"), (PromptTuningConfig, "n_virtual_tokens"),
                       (AdapterConfig, "bottleneck"), (PTuningConfig, "n_virtual_tokens")):
        with pytest.raises(ConfigError, match=field):
            cls(**{field: n})


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), left=st.booleans(),
       pooling=st.sampled_from(["cls", "mean", "last"]))
def test_pooling_matches_a_per_row_reference(lengths, left, pooling):
    t = max(lengths)
    h = torch.randn(len(lengths), t, 5)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, t - n:] = 1
        else:
            mask[i, :n] = 1
    got = pool(h, mask, pooling)
    for i in range(len(lengths)):
        rows = h[i][mask[i].bool()]
        want = {"cls": rows[0], "last": rows[-1], "mean": rows.mean(0)}[pooling]
        torch.testing.assert_close(got[i], want)


@settings(max_examples=15, deadline=None)
@given(
    arch=st.sampled_from(["decoder", "encoder"]),
    kv=st.sampled_from([1, 2, 4]),
    norm=st.sampled_from(["rmsnorm", "layernorm"]),
    biases=st.booleans(), gated=st.booleans(), n_layers=st.integers(1, 3),
    m=st.integers(1, 9), p=st.integers(1, 5), hidden=st.sampled_from([None, 8]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    k=st.integers(0, 1),
)
def test_closed_form_counts_for_random_architectures(arch, kv, norm, biases, gated, n_layers, m, p, hidden, flags, k):
    """Every method's trainable count equals its closed form, over GQA/MQA, norms, biases, FFN kinds."""
    a, b, c = flags
    cfg = ModelConfig(arch=arch, vocab_size=24, d_model=16, n_layers=n_layers, n_heads=4, n_kv_heads=kv, d_ff=24,
                      max_seq_len=32, norm=norm, qkv_bias=biases, o_bias=biases, ffn_bias=biases, gated_ffn=gated,
                      norm_position="post" if arch == "encoder" else "pre", lm_head_bias=biases and arch == "decoder")
    make = (lambda: DecoderLM(cfg)) if arch == "decoder" else (lambda: EncoderLM(cfg))
    configs = [
        ("adapter", dict(bottleneck=m, positions=("attn", "ffn") if a else ("ffn",), train_norms=b)),
        ("adapterdrop", dict(drop_layers=min(k, n_layers - 1), stochastic=c, adapter=AdapterConfig(bottleneck=m))),
        ("prefix", dict(n_virtual_tokens=p, projection=a, hidden_size=hidden)),
        ("prompt", dict(n_virtual_tokens=p)),
        ("ptuning", dict(n_virtual_tokens=p, encoder="lstm" if a else "mlp", hidden_size=hidden)),
        ("ptuning2", dict(n_virtual_tokens=p, num_labels=3 if b else 0)),
        ("bitfit", dict(add_missing_bias=True, train_norms=b)),
        ("probe", dict(num_labels=2 + m % 3, pooling="mean")),
    ]
    for name, opts in configs:
        spec = get_method(name)
        mc = spec.config_cls(**opts)
        model = spec.apply(make(), mc)
        assert count_trainable(model) == spec.param_count(cfg, mc), (name, opts)
