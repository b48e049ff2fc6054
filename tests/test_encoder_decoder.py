"""EncoderDecoderLM (T5-style) behaviour: masks, the shared relative bias, teacher forcing
from labels, reusing encoder states, and KV-cached incremental decoding equal to the full
forward. Logits parity with transformers' T5 is in test_hub_bert_t5.py."""

from __future__ import annotations

import pytest
import torch

from lmkit.models.build import build_model
from lmkit.models.config import ModelConfig
from lmkit.models.encoder_decoder import EncoderDecoderLM
from lmkit.models.kv_cache import KVCache

V = 53


def t5_config(**kw) -> ModelConfig:
    base = dict(arch="encoder_decoder", vocab_size=V, d_model=32, n_layers=2, n_decoder_layers=2, n_heads=4,
                head_dim=8, d_ff=48, max_seq_len=64, norm="rmsnorm", norm_eps=1e-6, norm_position="pre",
                activation="relu", gated_ffn=False, position="t5_bias", relative_buckets=8,
                relative_max_distance=16, scale_attn=False, tie_embeddings=True, dropout=0.0, pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0, model_type="t5")
    return ModelConfig(**{**base, **kw})


def make(**kw) -> EncoderDecoderLM:
    torch.manual_seed(0)
    m = EncoderDecoderLM(t5_config(**kw)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def model() -> EncoderDecoderLM:
    return make()


def batch(b=2, s=9, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[-1, s - 3:] = 0
    ids[-1, s - 3:] = 0
    dec = torch.randint(2, V, (b, t), generator=g)
    return ids, mask, dec


def test_parameter_names_and_sharing(model):
    names = set(model.state_dict())
    assert {"embed_tokens.weight", "lm_head.weight", "encoder.relative_bias.embedding.weight",
            "decoder.relative_bias.embedding.weight", "encoder.norm.weight", "decoder.norm.weight",
            "decoder.layers.1.cross_attn.k_proj.weight", "decoder.layers.0.cross_attn_norm.weight",
            "encoder.layers.1.mlp.up_proj.weight"} <= names
    assert not any("bias" in n and "relative_bias" not in n for n in names)  # T5 has no biases
    assert sum("relative_bias" in n for n in names) == 2  # one per stack, shared by its layers
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.encoder.relative_bias.bidirectional and not model.decoder.relative_bias.bidirectional
    assert isinstance(build_model(t5_config()), EncoderDecoderLM)


def test_decoder_is_causal_and_encoder_padding_is_masked(model):
    ids, mask, dec = batch()
    with torch.no_grad():
        a = model(ids, mask, decoder_input_ids=dec).logits
        dec2 = dec.clone()
        dec2[:, -1] = 1
        b = model(ids, mask, decoder_input_ids=dec2).logits
        ids2 = ids.clone()
        ids2[-1, -3:] = 7  # change only padded source tokens
        c = model(ids2, mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4
    torch.testing.assert_close(a, c)


def test_labels_are_shifted_right_like_transformers(model):
    transformers = pytest.importorskip("transformers")
    labels = torch.tensor([[5, 6, 7, 1], [8, 1, -100, -100]])
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=V, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4,
                              decoder_start_token_id=0, pad_token_id=0)
    )
    assert torch.equal(model.shift_right(labels), hf._shift_right(labels))
    ids, mask, _ = batch()
    out = model(ids, mask, labels=labels)
    again = model(ids, mask, decoder_input_ids=model.shift_right(labels))
    torch.testing.assert_close(out.logits, again.logits)
    logp = out.logits.log_softmax(-1)
    keep = labels != -100
    expected = -logp[keep].gather(-1, labels[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_encoder_states_can_be_reused(model):
    ids, mask, dec = batch()
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=dec)
        enc = model.encode(ids, mask)
        reused = model(attention_mask=mask, decoder_input_ids=dec, encoder_states=enc)
    torch.testing.assert_close(full.encoder_states, enc)
    torch.testing.assert_close(reused.logits, full.logits)


@pytest.mark.parametrize("kw", [
    dict(), dict(activation="gelu_tanh", gated_ffn=True, tie_embeddings=False),
    dict(n_decoder_layers=1, n_kv_heads=2), dict(position="rope"), dict(position="learned"),
    dict(position="sinusoidal", norm="layernorm", norm_position="post", scale_attn=True),
])
def test_incremental_decoding_equals_the_full_forward(kw):
    m = make(**kw)
    ids, mask, dec = batch(t=7)
    dmask = torch.ones_like(dec)
    dmask[0, 5:] = 0  # right padding in the target too
    with torch.no_grad():
        enc = m.encode(ids, mask)
        full = m.decode(dec, enc, attention_mask=mask, decoder_attention_mask=dmask).logits
        cache = m.make_cache(batch_size=2, max_len=16)
        assert isinstance(cache, KVCache) and cache.n_layers == m.config.n_decoder_layers
        steps = [m.decode(dec[:, :3], enc, attention_mask=mask, decoder_attention_mask=dmask[:, :3],
                          kv_cache=cache).logits]
        for i in range(3, 7):
            steps.append(m.decode(dec[:, i:i + 1], enc, attention_mask=mask, decoder_attention_mask=dmask[:, :i + 1],
                                  kv_cache=cache).logits)
    assert cache.seq_len == 7
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_greedy_decoding_with_and_without_cache_agree(model):
    ids, mask, _ = batch()
    with torch.no_grad():
        enc = model.encode(ids, mask)
        start = torch.full((2, 1), model.decoder_start_token_id)
        slow = start
        for _ in range(6):
            nxt = model.decode(slow, enc, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            slow = torch.cat([slow, nxt], 1)
        cache = model.make_cache(2, 8)
        fast, step = start, start
        for _ in range(6):
            step = model.decode(step, enc, attention_mask=mask, kv_cache=cache).logits[:, -1].argmax(-1, keepdim=True)
            fast = torch.cat([fast, step], 1)
    assert torch.equal(fast, slow)


def test_return_weights_and_backward(model):
    ids, mask, dec = batch()
    out = model(ids, mask, decoder_input_ids=dec, labels=dec, return_weights=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 6, 6)
    assert torch.triu(out.attentions[0][0, 0], 1).abs().max() == 0  # causal
    out.loss.backward()
    assert model.encoder.relative_bias.embedding.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_bad_inputs(model):
    ids, mask, dec = batch()
    with pytest.raises(ValueError, match="decoder_input_ids, or labels"):
        model(ids, mask)
    with pytest.raises(ValueError, match="input_ids"):
        model(decoder_input_ids=dec)
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="arch='encoder_decoder'"):
        EncoderDecoderLM(t5_config(arch="encoder"))
    with pytest.raises(ValueError, match="max_seq_len"):
        make(position="learned", max_seq_len=8)(ids, decoder_input_ids=dec)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """Both stacks recompute their layers (dropout RNG replayed): identical loss and gradients."""
    m = make(dropout=0.1, activation="gelu_tanh", gated_ffn=True).train()
    ids, mask, dec = batch()

    def grads():
        m.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = m(ids, mask, labels=dec).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    calls = []
    for stack in (m.encoder, m.decoder):
        stack.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss, ref = grads()
    assert len(calls) == 2
    m.gradient_checkpointing_enable()
    loss2, got = grads()
    assert len(calls) == 6  # each stack's layer: forward, then recomputed in the backward pass
    assert loss2.item() == loss.item()
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, rtol=0, atol=1e-7, msg=n)
