"""Sliding-window perplexity vs the Hugging Face recipe run on `transformers` models; bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.eval.perplexity import perplexity, sliding_window_nll, text_perplexity
from lmkit.hub import load_pretrained

transformers = pytest.importorskip("transformers")
V = 61


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=1, eos_token_id=2)
        hf = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       bos_token_id=1, eos_token_id=2)
        hf = transformers.LlamaForCausalLM(cfg)
    hf.eval()
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return hf, load_pretrained(d).float()


def hf_recipe(model, ids: torch.Tensor, max_length: int, stride: int):
    """The HF 'Perplexity of fixed-length models' loop, with the exact count of scored labels."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, doc_count, prev_end_loc = 0.0, 0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())  # labels that survive the shift
        doc_count += int((target_ids != -100).sum()) - target_ids.size(0)  # what the HF snippet counts
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens, doc_count


@pytest.mark.parametrize("max_length,stride", [(16, 16), (16, 8), (16, 5), (16, 1), (64, 64), (7, 3)])
def test_sliding_window_matches_hf_recipe(pair, max_length, stride):
    hf, ours = pair
    g = torch.Generator().manual_seed(max_length * 100 + stride)
    ids = torch.randint(0, V, (1, 50), generator=g)
    nll, n, windows = sliding_window_nll(ours, ids[0], max_length, stride)
    want_nll, want_n, doc_n = hf_recipe(hf, ids, max_length, stride)
    assert n == want_n
    if stride < max_length:
        assert n == 49  # every token but the first is scored exactly once
        # the HF doc snippet undercounts one token per window after the first
        assert doc_n == want_n - (windows - 1)
    else:  # disjoint chunks: the first token of each chunk has no context and is not scored
        assert n == 50 - windows and doc_n == want_n
    assert nll == pytest.approx(want_nll, rel=1e-4)
    rep = perplexity(ours, ids[0], max_length, stride)
    assert rep.perplexity == pytest.approx(math.exp(want_nll / want_n), rel=1e-4)


def test_single_window_equals_full_forward(pair):
    hf, ours = pair
    ids = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss = hf(ids, labels=ids).loss
    rep = perplexity(ours, ids[0], max_length=64)
    assert rep.mean_nll == pytest.approx(float(loss), rel=1e-5)
    assert rep.n_windows == 1 and rep.bits_per_token == pytest.approx(float(loss) / math.log(2), rel=1e-5)


def test_bits_per_byte_and_per_char(pair):
    from lmkit.tokenizers.simple import CharTokenizer

    _, ours = pair
    text = "the quick brown fox jumps over the lazy dog " * 4
    tok = CharTokenizer.train([text])
    assert tok.vocab_size <= V
    rep = text_perplexity(ours, tok, text, max_length=32, stride=8)
    nll = rep.nll
    assert rep.n_bytes == len(text.encode()) and rep.n_chars == len(text)
    assert rep.bits_per_byte == pytest.approx(nll / math.log(2) / len(text.encode()))
    # one character per token: bits/char = bits/token * scored tokens / chars
    assert rep.bits_per_char == pytest.approx(rep.bits_per_token * rep.n_tokens / rep.n_chars)
    zh = "语言模型的困惑度"
    tokz = CharTokenizer.train([zh])
    r2 = text_perplexity(ours, tokz, zh, max_length=8)
    assert r2.n_bytes == 3 * r2.n_chars and r2.bits_per_byte == pytest.approx(r2.bits_per_char / 3)


def test_lstm_perplexity_matches_its_loss():
    from lmkit.models.config import ModelConfig
    from lmkit.models.lstm import LSTMLM

    torch.manual_seed(0)
    m = LSTMLM(ModelConfig(arch="lstm", vocab_size=V, d_model=16, n_layers=1, n_heads=1, d_ff=16, max_seq_len=64)).eval()
    ids = torch.randint(0, V, (1, 40))
    with torch.no_grad():
        loss = m(ids, labels=ids).loss
    assert perplexity(m, ids[0], max_length=40).mean_nll == pytest.approx(float(loss), rel=1e-5)


def test_bad_input(pair):
    _, ours = pair
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(ours, [5], 16)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(ours, list(range(10)), 8, 9)
    with pytest.raises(ConfigError, match="max_length"):
        perplexity(ours, list(range(10)), 1)
    with pytest.raises(ConfigError, match="empty"):
        text_perplexity(ours, None, "")
