"""Checkpoints record where a reply ends, and tokens can be added to any checkpoint.

Oracles: transformers loads what lmkit writes (logits, vocabulary size, chat template,
generate stopping at <|im_end|>); gguf's reader for the GGUF metadata."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lmkit.errors import TokenizerError
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.hub.add_tokens import add_tokens, add_tokens_to_checkpoint
from lmkit.hub.add_tokens_command import add_tokens_cmd
from lmkit.hub.end_of_turn import checkpoint_tokens
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.chat_template import CHATML, LLAMA3, require_template_tokens
from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

transformers = pytest.importorskip("transformers")

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "what is the answer?"] * 10
CONV = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]


def tiny(vocab: int, tie: bool = False, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64,
                      model_type="llama", tie_embeddings=tie)
    return DecoderLM(cfg).eval()


def base_checkpoint(path, tie: bool):
    """A checkpoint whose tokenizer knows only <|endoftext|> (the pre-issue quickstart)."""
    tok = BPETokenizer.train(TEXT, vocab_size=290, special_tokens=["<|endoftext|>"])
    save_pretrained(tiny(tok.vocab_size, tie), path, tokenizer=tok)
    return tok


def hf_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0], hf


@pytest.mark.parametrize("tie", [False, True])
def test_add_chat_tokens_to_checkpoint(tmp_path, tie):
    base = tmp_path / "base"
    tok = base_checkpoint(base, tie)
    ids = tok.encode("hello world, the quick fox")
    before, _ = hf_logits(base, ids)
    with pytest.raises(TokenizerError, match=r"lmkit tokenizer add-tokens .* --chat chatml"):
        require_template_tokens(CHATML, tok)

    res = CliRunner().invoke(add_tokens_cmd, [str(base), "--chat", "chatml", "-o", str(tmp_path / "chat")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "chat"
    after, hf = hf_logits(out, ids)
    assert hf.config.vocab_size == tok.vocab_size + 3  # <|im_start|>, <|im_end|>, <|pad|>
    torch.testing.assert_close(after[:, : tok.vocab_size], before, rtol=1e-5, atol=1e-5)
    # the new rows are the mean row: their logit is the mean of the old logits
    torch.testing.assert_close(after[:, tok.vocab_size:], before.mean(-1, keepdim=True).expand(-1, 3),
                               rtol=1e-4, atol=1e-4)

    hft = transformers.AutoTokenizer.from_pretrained(out)
    assert len(hft) == tok.vocab_size + 3
    assert hft.apply_chat_template(CONV, tokenize=False) == CHATML.render(CONV)
    assert hft.convert_tokens_to_ids("<|im_end|>") == tok.vocab_size + 1
    cfg = json.loads((out / "config.json").read_text())
    eot = tok.token_to_id("<|endoftext|>")
    assert cfg["eos_token_id"] == [eot, tok.vocab_size + 1] and cfg["pad_token_id"] == tok.vocab_size + 2
    # lmkit reads it back; the template policy is satisfied
    from lmkit.tokenizers.loading import load_tokenizer

    require_template_tokens(CHATML, load_tokenizer(out))
    assert load_pretrained(out).config.vocab_size == tok.vocab_size + 3


def test_add_tokens_in_memory_transformers_tokenizer(tmp_path):
    base = tmp_path / "base"
    base_checkpoint(base, tie=False)
    hft = transformers.AutoTokenizer.from_pretrained(base)
    model = load_pretrained(base)
    n = len(hft)
    ids = add_tokens(model, hft, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    assert ids[:2] == [n, n + 1] and ids[2] == hft.convert_tokens_to_ids("<|endoftext|>")
    assert model.embed_tokens.weight.shape[0] == n + 2 and model.lm_head.weight.shape[0] == n + 2


def test_add_tokens_to_lmkit_json_and_errors(tmp_path):
    tok = BPETokenizer.train(TEXT, vocab_size=290)
    model = tiny(tok.vocab_size + 6)  # padded vocabulary: new ids land in existing rows
    ids = add_tokens(model, tok, ["<|im_end|>"])
    assert ids == [tok.vocab_size - 1] and model.config.vocab_size == tok.vocab_size + 5
    with pytest.raises(TokenizerError):
        add_tokens(model, tok, [""])
    with pytest.raises(Exception, match="no tokenizer.json"):
        add_tokens_to_checkpoint(tmp_path, chat="chatml")


def _rig_to_emit(model: DecoderLM, token: int) -> None:
    """Make greedy decoding pick `token` at every step: a constant channel in the residual
    stream that only `token`'s row of the (untied) head reads."""
    with torch.no_grad():
        model.embed_tokens.weight[:, 0] = 50.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[token, 0] = 5.0


def test_transformers_generate_stops_at_im_end(tmp_path):
    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=list(CHAT_SPECIAL_TOKENS))
    model = tiny(tok.vocab_size)
    im_end = tok.token_to_id("<|im_end|>")
    _rig_to_emit(model, im_end)
    save_pretrained(model, tmp_path / "m", tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    hft = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    prompt = hft.apply_chat_template(CONV[:1], add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(prompt):  # transformers 5 returns a BatchEncoding
        prompt = prompt["input_ids"]
    out = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert out[0, prompt.shape[1]:].tolist() == [im_end]
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.token_to_id("<|endoftext|>"), im_end]
    assert gen["pad_token_id"] == tok.token_to_id("<|pad|>")
    tc = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML.to_jinja() and tc["pad_token"] == "<|pad|>"


def test_checkpoint_tokens_llama3_and_plain():
    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=LLAMA3.special_tokens + ["<|end_of_text|>"])
    t = checkpoint_tokens(tok)
    assert t.template is LLAMA3 and t.bos == ("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))
    assert t.eos_ids == [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
    plain = checkpoint_tokens(BPETokenizer.train(TEXT, vocab_size=280, special_tokens=["<|endoftext|>"]))
    assert plain.template is None and plain.eos_token_id == 279 and plain.pad is None


@pytest.mark.parametrize("template", [CHATML, LLAMA3])
def test_jinja_renders_like_the_template(template):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    convs = [CONV, [{"role": "system", "content": " it's \\ S "}, {"role": "user", "content": "q\n"}]]
    for conv in convs:
        for gen in (False, True):
            rendered = env.from_string(template.to_jinja()).render(messages=conv, add_generation_prompt=gen)
            assert rendered == template.render(conv, add_generation_prompt=gen)


def test_gguf_records_end_of_turn_and_template(tmp_path):
    gguf = pytest.importorskip("gguf")
    from lmkit.hub.gguf import export_gguf_dir

    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=list(CHAT_SPECIAL_TOKENS))
    save_pretrained(tiny(tok.vocab_size), tmp_path / "m", tokenizer=tok)
    export_gguf_dir(tmp_path / "m", tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    value = lambda key: r.fields[key].contents()  # noqa: E731
    assert value("tokenizer.ggml.eos_token_id") == tok.token_to_id("<|endoftext|>")
    assert value("tokenizer.ggml.eot_token_id") == tok.token_to_id("<|im_end|>")
    assert value("tokenizer.ggml.padding_token_id") == tok.token_to_id("<|pad|>")
    assert value("tokenizer.chat_template") == CHATML.to_jinja()
    assert value("tokenizer.ggml.pre") == "gpt-2"
