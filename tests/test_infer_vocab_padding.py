"""Vocabulary padding: output rows beyond the tokenizer are never generated when a tokenizer is given.

The model's lm_head has V + 64 rows for a V-id tokenizer, and the padding rows are scaled up so
that, without the mask, they win the argmax almost every step. With the tokenizer, `generate`
(greedy, sampling, beam search), `stream_text` and speculative decoding produce only ids the
tokenizer renders, and the texts decode; without it, the raw ids are unchanged (old behaviour).
"""

from __future__ import annotations

import pytest
import torch

from lmkit.infer import generate, mask_unrenderable, renderable_size, select_tokens, speculative_generate, stream_text
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import BPETokenizer

V, PAD = 300, 64


@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog, and then it rains; " * 20
    return BPETokenizer.train([text], vocab_size=V, special_tokens=["<|endoftext|>"])


def padded_model(seed: int = 0) -> DecoderLM:
    cfg = ModelConfig(model_type="llama", arch="decoder", vocab_size=V + PAD, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2, d_ff=64, max_seq_len=128, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", tie_embeddings=False, eos_token_id=None)
    torch.manual_seed(seed)
    model = DecoderLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[V:] *= 50.0  # the padding rows would win nearly every step
    return model


@pytest.fixture(scope="module")
def model():
    return padded_model()


def test_the_helpers(tok):
    assert renderable_size(tok) == len(tok) == V and renderable_size(None) is None
    x = torch.randn(2, V + PAD)
    y = mask_unrenderable(x, V)
    assert torch.isinf(y[:, V:]).all() and torch.equal(y[:, :V], x[:, :V]) and not torch.isinf(x).any()
    assert mask_unrenderable(x, None) is x and mask_unrenderable(x, V + PAD) is x
    sel = select_tokens(x.abs() + torch.cat([torch.zeros(V), torch.full((PAD,), 100.0)]), vocab_limit=V)
    assert (sel.tokens < V).all()


def test_without_a_tokenizer_the_padding_would_be_generated(model, tok):
    out = generate(model, [tok.encode("the quick")], max_new_tokens=8)
    assert any(t >= V for t in out.sequences[0])  # the hazard the mask removes


@pytest.mark.parametrize("kw", [dict(), dict(do_sample=True, seed=3, top_k=50), dict(do_sample=True, seed=1),
                                dict(num_beams=3), dict(logprobs=True, top_logprobs=5)])
def test_generate_with_the_tokenizer_never_produces_padding_ids(model, tok, kw):
    prompts = [tok.encode("the quick"), tok.encode("lazy dog and then")]
    out = generate(model, prompts, max_new_tokens=12, tokenizer=tok, **kw)
    for seq, text in zip(out.sequences, out.texts):
        assert seq and all(0 <= t < V for t in seq)
        assert text == tok.decode(seq)
    if kw.get("top_logprobs"):
        assert all(t < V for steps in out.top_logprobs for step in steps for t in step)


def test_stream_text_and_speculative_never_produce_padding_ids(model, tok):
    prompt = "the quick"
    streamed = "".join(stream_text(model, tok, prompt, max_new_tokens=10))
    out = generate(model, [tok.encode(prompt)], max_new_tokens=10, tokenizer=tok)
    assert streamed == out.texts[0]
    for kw in (dict(), dict(do_sample=True, seed=2)):
        spec = speculative_generate(model, padded_model(seed=1), [tok.encode(prompt)], max_new_tokens=10,
                                    tokenizer=tok, num_draft_tokens=3, **kw)
        assert all(0 <= t < V for t in spec.sequences[0]) and spec.texts[0] == tok.decode(spec.sequences[0])
    greedy = speculative_generate(model, padded_model(seed=1), [tok.encode(prompt)], max_new_tokens=10,
                                  tokenizer=tok, num_draft_tokens=3)
    assert greedy.sequences == out.sequences  # speculative greedy == plain greedy, under the same mask
