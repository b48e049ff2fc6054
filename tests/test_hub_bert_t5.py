"""Hugging Face checkpoint I/O for BERT and T5, against `transformers` as the oracle.

Both directions: a randomly initialised transformers model saved with `save_pretrained`
loads into lmkit with the same logits (max |diff| <= 1e-4), and an lmkit model saved by
lmkit loads into transformers with the same logits. BERT: BertForPreTraining (MLM + NSP
logits and loss, token types, padding), BertModel without heads, BertForMaskedLM. T5:
v1.0 (relu, tied, rescaled) and v1.1 (gated-gelu, untied), padding on both sides, loss.
Plus every way a config or checkpoint can be bad.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lmkit.errors import CheckpointError, ConfigError  # noqa: E402
from lmkit.hub import load_pretrained, save_pretrained  # noqa: E402
from lmkit.hub import arch_bert, arch_t5  # noqa: E402
from lmkit.models.config import ModelConfig  # noqa: E402
from lmkit.models.encoder import EncoderLM  # noqa: E402
from lmkit.models.encoder_decoder import EncoderDecoderLM  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
TOL = 1e-4
V = 97


def perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter (norm gains, biases) off its initial value, reproducibly."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= TOL, diff


# ---- BERT ----------------------------------------------------------------------------------
def hf_dict(config) -> dict:
    """A transformers config as its config.json holds it (string keys, JSON types)."""
    return json.loads(config.to_json_string())


def bert_hf_config(**kw):
    return transformers.BertConfig(**{**dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48,
                                             max_position_embeddings=40, type_vocab_size=2), **kw})


def bert_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    types = torch.zeros(3, 11, dtype=torch.long)
    types[:, 5:] = 1
    labels = torch.full((3, 11), -100)
    labels[0, 3], labels[1, 2], labels[2, 1] = 4, 50, 9
    return ids, mask, types, labels, torch.tensor([0, 1, 0])


def test_bert_for_pretraining_hf_to_lmkit(tmp_path):
    hf = perturb(transformers.BertForPreTraining(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, EncoderLM) and ours.config.model_type == "bert"
    assert ours.heads == ("pooler", "mlm", "nsp")
    ids, mask, types, labels, nsl = bert_inputs()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsl)
        b = ours(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsl)
    close(b.logits, a.prediction_logits)
    close(b.nsp_logits, a.seq_relationship_logits)
    close(b.loss, a.loss)


def test_bert_lmkit_to_hf(tmp_path):
    torch.manual_seed(0)
    cfg = arch_bert.config_from_hf(hf_dict(bert_hf_config(hidden_act="gelu")))
    ours = perturb(EncoderLM(cfg))
    save_pretrained(ours, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["BertForPreTraining"] and "heads" not in written
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    ids, mask, types, _, _ = bert_inputs()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = ours(ids, attention_mask=mask, token_type_ids=types)
    close(a.prediction_logits, b.logits)
    close(a.seq_relationship_logits, b.nsp_logits)
    again = load_pretrained(tmp_path)  # and back into lmkit
    assert again.config.to_dict() == ours.config.to_dict()


def test_bert_model_without_heads_both_ways(tmp_path):
    hf = perturb(transformers.BertModel(bert_hf_config()))
    hf.save_pretrained(tmp_path / "hf")
    assert not any(k.startswith("bert.") for k in load_file(tmp_path / "hf" / "model.safetensors"))
    ours = load_pretrained(tmp_path / "hf")
    assert ours.heads == ("pooler",) and not hasattr(ours, "mlm_head")
    ids, mask, types, _, _ = bert_inputs()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = ours(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    close(b.hidden_states[real], a.last_hidden_state[real])
    close(b.pooled, a.pooler_output)
    save_pretrained(ours, tmp_path / "ours")
    back = transformers.AutoModel.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == "BertModel"
    with torch.no_grad():
        c = back(input_ids=ids, attention_mask=mask, token_type_ids=types)
    close(c.last_hidden_state[real], b.hidden_states[real])
    close(c.pooler_output, b.pooled)


def test_bert_masked_lm_has_no_pooler(tmp_path):
    hf = perturb(transformers.BertForMaskedLM(bert_hf_config(tie_word_embeddings=False)))
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.heads == ("mlm",) and ours.mlm_head.decoder.weight is not ours.embed_tokens.weight
    ids, mask, types, _, _ = bert_inputs()
    with torch.no_grad():
        close(ours(ids, mask, types).logits, hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
    save_pretrained(ours, tmp_path / "ours")
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        close(back(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, ours(ids, mask, types).logits)


@pytest.mark.parametrize("heads", [("pooler", "mlm"), (), ("pooler", "nsp")])
def test_bert_any_head_set_round_trips(tmp_path, heads):
    cfg = arch_bert.config_from_hf(hf_dict(bert_hf_config()))
    ours = perturb(EncoderLM(cfg, heads=heads))
    save_pretrained(ours, tmp_path)
    again = load_pretrained(tmp_path)
    assert again.heads == heads
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        a, b = ours(ids), again(ids)
    close(a.hidden_states, b.hidden_states)
    hf = transformers.AutoConfig.from_pretrained(tmp_path).architectures[0]
    model = getattr(transformers, hf).from_pretrained(tmp_path).eval()  # the nearest transformers class
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    close(out.hidden_states[-1], a.hidden_states)


def test_heads_follow_the_weights(tmp_path):
    """A BertModel exported without its pooler, and a BertForPreTraining config whose head
    weights were stripped, load as the backbone (with a warning for promised heads)."""
    hf = perturb(transformers.BertModel(bert_hf_config(), add_pooling_layer=False))
    hf.save_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match=r"\['pooler'\]"):
        ours = load_pretrained(tmp_path / "bare")
    assert ours.heads == () and ours.config.extra["heads"] == []
    ids, mask, types, _, _ = bert_inputs()
    real = mask.bool()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        b = ours(ids, attention_mask=mask, token_type_ids=types)
    assert b.pooled is None and b.logits is None
    close(b.hidden_states[real], a[real])

    full = perturb(transformers.BertForPreTraining(bert_hf_config()))
    full.save_pretrained(tmp_path / "full")
    sd = load_file(tmp_path / "full" / "model.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("cls.")}, tmp_path / "full" / "model.safetensors")
    with pytest.warns(UserWarning, match=r"\['mlm', 'nsp'\]"):
        ours = load_pretrained(tmp_path / "full")
    assert ours.heads == ("pooler",)
    with torch.no_grad():
        a = full.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = ours(ids, attention_mask=mask, token_type_ids=types)
    close(b.pooled, a.pooler_output)


def test_bert_legacy_gamma_beta_names(tmp_path):
    hf = perturb(transformers.BertForPreTraining(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in sd.items()}
    legacy["bert.embeddings.position_ids"] = torch.arange(40)[None]
    save_file(legacy, tmp_path / "model.safetensors")
    ours = load_pretrained(tmp_path)
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        close(ours(ids).logits, hf(input_ids=ids).prediction_logits)


def test_bert_name_table_round_trips():
    cfg = arch_bert.config_from_hf(hf_dict(bert_hf_config()))
    state = EncoderLM(cfg).state_dict()
    state.pop("mlm_head.decoder.weight")  # tied: saved once, as the embedding
    theirs = arch_bert.state_to_hf(state, cfg)
    assert "bert.encoder.layer.1.attention.self.query.weight" in theirs and "cls.seq_relationship.bias" in theirs
    assert set(arch_bert.state_from_hf(theirs, cfg)) == set(state)


# ---- T5 -------------------------------------------------------------------------------------
def t5_hf_config(ff: str, tie: bool):
    return transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                 num_heads=4, feed_forward_proj=ff, tie_word_embeddings=tie,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def t5_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, V, (2, 13), generator=g)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    ids[1, 9:] = 0
    labels = torch.randint(2, V, (2, 7), generator=g)
    labels[0, 5:] = -100
    dec = torch.randint(2, V, (2, 7), generator=g)
    dmask = torch.ones(2, 7, dtype=torch.long)
    dmask[0, 5:] = 0
    return ids, mask, labels, dec, dmask


T5_VARIANTS = [("relu", True), ("gated-gelu", False)]


@pytest.mark.parametrize("ff,tie", T5_VARIANTS)
def test_t5_hf_to_lmkit(tmp_path, ff, tie):
    torch.manual_seed(0)
    hf = perturb(transformers.T5ForConditionalGeneration(t5_hf_config(ff, tie)))
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, EncoderDecoderLM) and ours.config.gated_ffn == (ff != "relu")
    assert ours.config.tie_embeddings == tie
    ids, mask, labels, dec, dmask = t5_inputs()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
        b = ours(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
        close(b.logits, a.logits)
        close(b.encoder_states[mask.bool()], a.encoder_last_hidden_state[mask.bool()])
        a = hf(input_ids=ids, attention_mask=mask, labels=labels)  # teacher forcing from labels
        b = ours(ids, mask, labels=labels)
    close(b.logits, a.logits)
    close(b.loss, a.loss)


@pytest.mark.parametrize("ff,tie", T5_VARIANTS)
def test_t5_lmkit_to_hf(tmp_path, ff, tie):
    torch.manual_seed(0)
    ours = perturb(EncoderDecoderLM(arch_t5.config_from_hf(hf_dict(t5_hf_config(ff, tie)))), 0.05)
    save_pretrained(ours, tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask, labels, dec, dmask = t5_inputs()
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
        b = ours(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    close(a.logits, b.logits)
    again = load_pretrained(tmp_path)
    assert again.config.to_dict() == ours.config.to_dict()


def test_t5_transformers4_layout(tmp_path):
    """transformers 4 wrote per-stack embedding copies and, for v1.1, tie_word_embeddings=false
    with a separate lm_head.weight (and no scale_decoder_outputs)."""
    torch.manual_seed(0)
    hf = perturb(transformers.T5ForConditionalGeneration(t5_hf_config("gated-gelu", False)))
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    head = torch.randn(V, 32, generator=torch.Generator().manual_seed(3))
    sd.update({"lm_head.weight": head, "encoder.embed_tokens.weight": sd["shared.weight"],
               "decoder.embed_tokens.weight": sd["shared.weight"],
               "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": torch.zeros(8, 4)})
    save_file({k: v.clone() for k, v in sd.items()}, tmp_path / "model.safetensors")
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    hf_cfg.pop("scale_decoder_outputs", None)
    hf_cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    ours = load_pretrained(tmp_path)
    assert not ours.config.tie_embeddings and torch.equal(ours.lm_head.weight, head)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask, labels, _, _ = t5_inputs()
    with torch.no_grad():
        close(ours(ids, mask, labels=labels).logits, hf(input_ids=ids, attention_mask=mask, labels=labels).logits)


def test_t5_feed_forward_variants_map_both_ways():
    for proj, act, gated in [("relu", "relu", False), ("gated-gelu", "gelu_tanh", True), ("gelu", "gelu", False),
                             ("gated-silu", "silu", True), ("gated-gelu_python", "gelu", True)]:
        cfg = arch_t5.config_from_hf({**hf_dict(t5_hf_config("relu", True)), "feed_forward_proj": proj})
        assert (cfg.activation, cfg.gated_ffn) == (act, gated), proj
        assert arch_t5.config_to_hf(cfg)["feed_forward_proj"] == proj


# ---- bad input ------------------------------------------------------------------------------
def test_bert_config_that_contradicts_itself(tmp_path):
    hf = hf_dict(bert_hf_config())
    with pytest.raises(ConfigError, match=r"hidden_size=30 is not divisible by num_attention_heads=4"):
        arch_bert.config_from_hf({**hf, "hidden_size": 30})
    with pytest.raises(ConfigError, match="position_embedding_type"):
        arch_bert.config_from_hf({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="hidden_act"):
        arch_bert.config_from_hf({**hf, "hidden_act": "mish"})
    with pytest.raises(ConfigError, match="is_decoder"):
        arch_bert.config_from_hf({**hf, "is_decoder": True})
    with pytest.raises(ConfigError, match="architectures"):
        arch_bert.config_from_hf({**hf, "architectures": ["BertForSomethingElse"]})
    with pytest.raises(ConfigError, match="pad_token_id"):
        arch_bert.config_from_hf({**hf, "pad_token_id": V + 5})
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        arch_bert.config_from_hf({k: v for k, v in hf.items() if k != "num_hidden_layers"})
    (tmp_path / "config.json").write_text(json.dumps({**hf, "model_type": "bert", "hidden_size": 30}))
    with pytest.raises(ConfigError, match="config.json"):
        load_pretrained(tmp_path)


def test_t5_unsupported_options():
    hf = hf_dict(t5_hf_config("relu", True))
    with pytest.raises(ConfigError, match="quick_gelu"):
        arch_t5.config_from_hf({**hf, "feed_forward_proj": "gated-quick_gelu"})
    with pytest.raises(ConfigError, match="gated-ACT"):
        arch_t5.config_from_hf({**hf, "feed_forward_proj": "gated-gelu-x"})
    with pytest.raises(ConfigError, match="decoder_start_token_id"):
        arch_t5.config_from_hf({**hf, "decoder_start_token_id": V})


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    hf = perturb(transformers.BertForPreTraining(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    full = dict(sd)
    del sd["bert.encoder.layer.1.output.dense.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing[\s\S]*layers\.1\.mlp\.down_proj\.weight"):
        load_pretrained(tmp_path)
    # a head present only in part is built, so its missing tensors are named
    partial = {k: v for k, v in full.items() if k not in ("cls.predictions.transform.dense.weight",
                                                          "cls.seq_relationship.bias")}
    save_file(partial, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"mlm_head\.dense\.weight[\s\S]*nsp_head\.bias"):
        load_pretrained(tmp_path)
    # an NSP head keeps the pooler it reads, so a missing pooler is named too
    no_pooler = {k: v for k, v in full.items() if not k.startswith("bert.pooler.")}
    save_file(no_pooler, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"pooler\.dense\.weight"):
        load_pretrained(tmp_path)
    bad = dict(full)
    bad["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(3, 32)
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"embed_types\.weight: expected \(2, 32\), found \(3, 32\)"):
        load_pretrained(tmp_path)


def test_t5_bad_checkpoints_are_named(tmp_path):
    hf = transformers.T5ForConditionalGeneration(t5_hf_config("gated-gelu", False))
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    full = dict(sd)
    del sd["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    sd["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = torch.zeros(48, 32)  # relu name in a gated model
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing[\s\S]*decoder\.layers\.1\.cross_attn\.k_proj\.weight"
                                              r"[\s\S]*unexpected[\s\S]*DenseReluDense\.wi\.weight"):
        load_pretrained(tmp_path)
    save_file(full, tmp_path / "model.safetensors")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "pad_token_id": V + 1}))
    with pytest.raises(ConfigError, match=r"t5\) contradicts itself[\s\S]*pad_token_id[\s\S]*config\.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "gated-mish"}))
    with pytest.raises(ConfigError, match=r"feed_forward_proj='gated-mish'"):
        load_pretrained(tmp_path)


def test_t5_tied_config_with_a_different_head_is_rejected(tmp_path):
    hf = transformers.T5ForConditionalGeneration(t5_hf_config("relu", True))
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["lm_head.weight"] = torch.randn(V, 32)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_pretrained(tmp_path)


def test_models_that_cannot_be_written_as_bert_or_t5(tmp_path):
    cfg = ModelConfig(arch="encoder", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=48,
                      norm_position="pre", model_type="bert")
    with pytest.raises(ConfigError, match="cannot be written as a bert checkpoint"):
        save_pretrained(EncoderLM(cfg), tmp_path / "b")
    cfg = ModelConfig(arch="encoder_decoder", vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=48,
                      position="rope", model_type="t5")
    with pytest.raises(ConfigError, match="cannot be written as a t5 checkpoint"):
        save_pretrained(EncoderDecoderLM(cfg), tmp_path / "t")
    assert not (tmp_path / "b").exists() and not (tmp_path / "t").exists()
