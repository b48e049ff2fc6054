"""Vocabulary expansion (词表扩增): a domain BPE merged into an English byte-level BPE, the
model grown to match; old ids and old encodings unchanged; transformers loads the result."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.hub.expand_vocab import expand_embeddings, train_new_rows_only
from lmkit.models.build import build_model
from lmkit.models.config import ModelConfig
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.bpe_vocab_merge import expand_bpe, non_ascii, old_token_leaves

TINY = dict(arch="decoder", model_type="llama", norm="rmsnorm", activation="silu", gated_ffn=True, position="rope",
            d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64, norm_eps=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def texts(corpus_dir):
    en = (corpus_dir / "en.txt").read_text(encoding="utf-8")[:40_000]
    zh = (corpus_dir / "zh.txt").read_text(encoding="utf-8")[:30_000]
    return en, zh


@pytest.fixture(scope="module")
def base(texts):
    return BPETokenizer.train([texts[0]], 400, special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="module")
def expanded(base, texts):
    return expand_bpe(base, [texts[1]], 120)


@pytest.fixture(scope="module")
def expanded_non_ascii(base, texts):
    return expand_bpe(base, [texts[1] + texts[0][:5000]], 120, keep=non_ascii)


def test_expansion_adds_pieces_with_new_ids_and_shortens_the_domain(base, expanded, texts):
    tok = expanded.tokenizer
    assert len(expanded.new_ids) == 120
    assert expanded.new_ids == list(range(base.vocab_size, base.vocab_size + 120))
    for i in range(base.vocab_size):  # every old id keeps its bytes / content
        assert tok.token_bytes(i) == base.token_bytes(i)
    assert tok.special_tokens == base.special_tokens
    assert "的" in expanded.new_pieces()
    zh = texts[1][-5000:]  # held out from the domain tokenizer's training text
    assert len(tok.encode(zh)) < 0.7 * len(base.encode(zh))
    for i, parts in expanded.leaves.items():  # a new token is the concatenation of its leaves
        assert tok.token_bytes(i) == b"".join(base.token_bytes(j) for j in parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from("的模型数据训练是在中，。 abcdeLoRA学习\n"), max_size=40) | st.text(max_size=30))
def test_any_text_is_the_base_encoding_with_runs_fused(base, expanded, s):
    """Expanding the new ids into their leaves gives back the base tokenizer's ids, for any text."""
    ids = expanded.tokenizer.encode(s)
    assert old_token_leaves(expanded, ids) == base.encode(s)
    assert expanded.tokenizer.decode(ids) == base.decode(base.encode(s))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_text_encodes_identically_when_only_non_ascii_pieces_are_added(base, expanded_non_ascii, s):
    assert expanded_non_ascii.tokenizer.encode(s) == base.encode(s)


def test_old_english_text_encodes_identically(base, expanded_non_ascii, texts):
    assert len(expanded_non_ascii.new_ids) == 120
    assert expanded_non_ascii.tokenizer.encode(texts[0]) == base.encode(texts[0])


def test_tokenizer_json_and_lmkit_json_round_trips(expanded, texts, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = expanded.tokenizer
    sample = texts[1][:3000] + texts[0][:2000]
    tok.save_hf_json(tmp_path / "tokenizer.json")
    tok.save(tmp_path / "tok.lmkit.json")
    for path in ("tokenizer.json", "tok.lmkit.json"):
        again = BPETokenizer.load(tmp_path / path)
        assert again.encode(sample) == tok.encode(sample)
    oracle = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert oracle.encode(sample).ids == tok.encode(sample)


@pytest.mark.parametrize("tie", [True, False])
def test_new_rows_are_the_mean_of_their_leaves_and_old_logits_stay(base, expanded, tie):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**TINY, "vocab_size": base.vocab_size, "tie_embeddings": tie})).eval()
    ids = torch.tensor([base.encode("the model 训练 data")])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    old_embed = model.embed_tokens.weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    expand_embeddings(model, expanded.tokenizer.vocab_size, expanded.leaves)
    assert model.config.vocab_size == model.embed_tokens.weight.shape[0] == expanded.tokenizer.vocab_size
    assert (model.lm_head.weight is model.embed_tokens.weight) == tie
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after[..., :base.vocab_size], before, rtol=0, atol=0)
    z = expanded.new_ids[5]
    parts = expanded.leaves[z]
    torch.testing.assert_close(model.embed_tokens.weight[z], old_embed[parts].mean(0))
    torch.testing.assert_close(model.lm_head.weight[z], old_head[parts].mean(0))


def test_training_only_the_new_rows_leaves_the_old_model_untouched(base, expanded):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**TINY, "vocab_size": base.vocab_size, "tie_embeddings": False}))
    expand_embeddings(model, expanded.tokenizer.vocab_size, expanded.leaves)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    handles = train_new_rows_only(model, base.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids = torch.tensor([expanded.tokenizer.encode("模型的训练数据是的模型")])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for h in handles:
        h.remove()
    n = base.vocab_size
    for k, v in model.state_dict().items():
        if k in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(v[:n], before[k][:n])
            assert not torch.equal(v[n:], before[k][n:])
        else:
            assert torch.equal(v, before[k]), k


def test_cli_expands_a_checkpoint_that_transformers_loads(base, texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    from click.testing import CliRunner

    from lmkit.cli import cli
    from lmkit.hub.pretrained import load_pretrained, save_pretrained

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict({**TINY, "vocab_size": base.vocab_size, "tie_embeddings": False}))
    save_pretrained(model, tmp_path / "base", tokenizer=base)
    (tmp_path / "zh.txt").write_text(texts[1], encoding="utf-8")
    res = CliRunner().invoke(cli, ["tokenizer", "expand", str(tmp_path / "base"), "--domain", str(tmp_path / "zh.txt"),
                                    "--new-tokens", "60", "--out", str(tmp_path / "big")])
    assert res.exit_code == 0, res.output
    assert "added 60 tokens" in res.output
    ours_tok = BPETokenizer.load(tmp_path / "big" / "tokenizer.json")
    ours = load_pretrained(tmp_path / "big").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "big")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "big").eval()
    text = "大模型的训练数据 and the model"
    ids = ours_tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert max(ids) >= base.vocab_size  # new tokens in use
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(input_ids=x).logits, rtol=1e-4, atol=1e-5)
