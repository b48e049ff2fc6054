"""EncoderLM (BERT-style) behaviour that needs no checkpoint: bidirectional and padding
masks, heads, losses, sentence embeddings. Logits parity with transformers' BERT is in
test_hub_bert_t5.py; the real all-MiniLM-L6-v2 weights in test_minilm.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.hub.pretrained import load_state_dict_strict
from lmkit.models.build import build_model
from lmkit.models.config import ModelConfig
from lmkit.models.encoder import HEADS, EncoderLM, encoder_heads

V = 61


def bert_config(**kw) -> ModelConfig:
    base = dict(arch="encoder", vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32,
                norm="layernorm", norm_eps=1e-12, norm_position="post", activation="gelu", gated_ffn=False,
                position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, type_vocab_size=2,
                tie_embeddings=True, dropout=0.0, attn_dropout=0.0, model_type="bert")
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model() -> EncoderLM:
    torch.manual_seed(0)
    m = EncoderLM(bert_config()).eval()
    with torch.no_grad():  # move norms and biases off their initial values
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_parameter_names_and_tied_decoder(model):
    names = set(model.state_dict())
    for n in ("embed_tokens.weight", "embed_positions.weight", "embed_types.weight", "embed_norm.weight",
              "layers.1.self_attn.q_proj.bias", "layers.0.attn_norm.weight", "layers.0.mlp.up_proj.weight",
              "layers.0.mlp_norm.bias", "pooler.dense.weight", "mlm_head.dense.weight", "mlm_head.norm.weight",
              "mlm_head.decoder.weight", "mlm_head.bias", "nsp_head.weight", "nsp_head.bias"):
        assert n in names, n
    assert model.mlm_head.decoder.weight is model.embed_tokens.weight
    assert model.heads == HEADS
    assert isinstance(build_model(bert_config()), EncoderLM)


def test_bidirectional_every_position_sees_the_future(model):
    ids = torch.randint(0, V, (1, 8))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % V
    with torch.no_grad():
        a, b = model(ids).hidden_states, model(other).hidden_states
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # unlike a causal model, token 0 changes


@settings(max_examples=15, deadline=None)
@given(n_real=st.integers(1, 10), n_pad=st.integers(1, 6), pad_id=st.integers(0, V - 1))
def test_padding_does_not_change_real_tokens(model, n_real, n_pad, pad_id):
    g = torch.Generator().manual_seed(n_real * 31 + n_pad)
    ids = torch.randint(0, V, (1, n_real), generator=g)
    padded = torch.cat([ids, torch.full((1, n_pad), pad_id)], dim=1)
    mask = torch.cat([torch.ones(1, n_real), torch.zeros(1, n_pad)], dim=1).long()
    with torch.no_grad():
        a = model(ids)
        b = model(padded, attention_mask=mask)
    torch.testing.assert_close(b.hidden_states[:, :n_real], a.hidden_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.nsp_logits, a.nsp_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.embed(padded, mask), model.embed(ids), atol=1e-5, rtol=1e-5)


def test_attention_weights_ignore_padding(model):
    ids = torch.randint(0, V, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask, return_weights=True)
        fast = model(ids, attention_mask=mask)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    w = out.attentions[1]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 7))
    assert w[1, :, :, 4:].abs().max() == 0
    torch.testing.assert_close(out.logits, fast.logits, atol=1e-5, rtol=1e-5)


def test_losses_match_their_definitions(model):
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, 9))
    tt = torch.zeros_like(ids)
    tt[:, 5:] = 1
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 7], labels[2, 0], labels[2, 3] = 5, 9, 11, 2
    nsl = torch.tensor([0, 1, 1])
    out = model(ids, token_type_ids=tt, labels=labels, next_sentence_label=nsl)
    logp = out.logits.log_softmax(-1)
    picked = [logp[b, t, labels[b, t]] for b, t in [(0, 2), (1, 7), (2, 0), (2, 3)]]
    mlm = -torch.stack(picked).mean()
    nsp = -out.nsp_logits.log_softmax(-1)[torch.arange(3), nsl].mean()
    torch.testing.assert_close(out.loss, mlm + nsp)
    assert model(ids, token_type_ids=tt, labels=labels).loss.item() == pytest.approx(mlm.item(), rel=1e-5)
    out.loss.backward()
    assert model.embed_tokens.weight.grad is not None and model.nsp_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_token_types_matter(model):
    ids = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        a = model(ids).hidden_states
        b = model(ids, token_type_ids=torch.ones_like(ids)).hidden_states
        c = model(ids, token_type_ids=torch.zeros_like(ids)).hidden_states
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(a, c)


def test_embed_pooling(model):
    ids = torch.randint(0, V, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    e = model.embed(ids, mask)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        h = model(ids, attention_mask=mask).hidden_states
    raw = model.embed(ids, mask, normalize=False)
    torch.testing.assert_close(raw[1], h[1, :4].mean(0))
    torch.testing.assert_close(model.embed(ids, mask, pooling="cls"), F.normalize(h[:, 0], dim=-1))
    with pytest.raises(ValueError, match="pooling"):
        model.embed(ids, pooling="max")


def test_heads_subset_is_recorded_in_the_config():
    cfg = bert_config()
    m = EncoderLM(cfg, heads=["pooler"])
    assert m.heads == ("pooler",) and encoder_heads(m.config) == ("pooler",)
    assert "heads" not in cfg.extra  # the caller's config is left alone
    assert not any(k.startswith(("mlm_head", "nsp_head")) for k in m.state_dict())
    again = build_model(ModelConfig.from_json(m.config.to_json()))  # rebuilt from its config: same parameters
    assert set(again.state_dict()) == set(m.state_dict())
    out = m(torch.randint(0, V, (2, 5)))
    assert out.logits is None and out.nsp_logits is None and out.pooled.shape == (2, 32)
    with pytest.raises(ValueError, match="no 'mlm' head"):
        m(torch.randint(0, V, (2, 5)), labels=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the 'pooler'"):
        EncoderLM(cfg, heads=["mlm", "nsp"])
    with pytest.raises(ValueError, match="unknown"):
        EncoderLM(cfg, heads=["classifier"])
    mlm_only = EncoderLM(cfg, heads=["mlm"])
    assert mlm_only(torch.randint(0, V, (1, 4))).pooled is None


def test_a_checkpoint_without_heads_fails_by_name_unless_the_config_says_so(model):
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(("pooler", "mlm_head", "nsp_head"))}
    from lmkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="mlm_head.dense.weight"):
        load_state_dict_strict(EncoderLM(bert_config()), backbone)
    m = EncoderLM(bert_config(), heads=())
    load_state_dict_strict(m, backbone)
    torch.testing.assert_close(m.eval()(torch.arange(6)[None]).hidden_states,
                               model(torch.arange(6)[None]).hidden_states)


@pytest.mark.parametrize("kw", [
    dict(position="sinusoidal"), dict(position="rope"), dict(position="alibi"), dict(position="t5_bias"),
    dict(position="none", type_vocab_size=0), dict(norm_position="pre", norm="rmsnorm", n_kv_heads=2),
])
def test_other_encoder_variants_run_and_mask_padding(kw):
    torch.manual_seed(0)
    m = EncoderLM(bert_config(**kw)).eval()
    ids = torch.randint(0, V, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        a, b = m(ids), m(padded, attention_mask=mask)
    torch.testing.assert_close(b.hidden_states[:, :5], a.hidden_states, atol=1e-5, rtol=1e-5)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="arch='encoder'"):
        EncoderLM(bert_config(arch="decoder"))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputed activations (dropout included: its RNG state is replayed) give identical gradients."""
    torch.manual_seed(0)
    m = EncoderLM(bert_config(dropout=0.1, attn_dropout=0.1)).train()
    ids = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.where(torch.rand(2, 9, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)

    def grads():
        m.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = m(ids, attention_mask=mask, labels=labels, next_sentence_label=torch.tensor([0, 1])).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    calls = []
    m.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss, ref = grads()
    assert len(calls) == 1
    m.gradient_checkpointing_enable()
    loss2, got = grads()
    assert len(calls) == 3  # forward, then recomputed in the backward pass
    assert loss2.item() == loss.item()
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, rtol=0, atol=1e-7, msg=n)
