"""`lmkit generate`, `chat` and `serve` on adapter folders (LoRA and prompt tuning, detected or
with --adapter), `quantize` on one (names `lmkit merge`), and the one chat-template policy: a
tokenizer without ChatML's tokens is an error naming `lmkit tokenizer add-tokens MODEL`."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from lmkit.cli import cli
from lmkit.hub import load_pretrained, save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 10


def _checkpoint(path, specials):
    tok = BPETokenizer.train(TEXT, vocab_size=290, special_tokens=specials)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=64, model_type="llama", tie_embeddings=False)
    save_pretrained(DecoderLM(cfg).eval(), path, tokenizer=tok)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from lmkit.peft.finetune import apply_method
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_lora
    from lmkit.peft.method_io import save_method

    root = tmp_path_factory.mktemp("run_adapter")
    base = _checkpoint(root / "base", list(CHAT_SPECIAL_TOKENS))
    tuned = inject_lora(load_pretrained(base), LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_lora(tuned, root / "lora", base_model_name_or_path=str(base.resolve()))
    prompt, config, _ = apply_method("prompt", load_pretrained(base))
    save_method(prompt, root / "prompt", "prompt", config, base_model_name_or_path=str(base.resolve()))
    plain = _checkpoint(root / "plain", ["<|endoftext|>"])
    return {"base": base, "lora": root / "lora", "prompt": root / "prompt", "plain": plain}


def _run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def _generate(*model_args):
    r = _run("generate", *model_args, "-p", "hello", "--max-new-tokens", "6")
    assert r.exit_code == 0, r.output
    return r.output


def test_generate_on_a_lora_folder_detected_or_with_adapter(folders):
    alone = _generate(folders["lora"])
    assert alone == _generate(folders["base"], "--adapter", folders["lora"])
    assert alone != _generate(folders["base"])  # the adapter changed the model


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_chat_and_generate_on_an_adapter_folder(folders, kind):
    assert _generate(folders[kind]).startswith("hello")
    r = _run("chat", folders[kind], "--temperature", "0", "--max-tokens", "4", input="hi\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "chatting with" in r.output


def test_quantize_and_eval_on_an_adapter_folder_name_lmkit_merge(folders, tmp_path):
    r = CliRunner().invoke(cli, ["quantize", str(folders["lora"]), "-o", str(tmp_path / "q"), "--method", "int8"])
    assert r.exit_code != 0 and "lmkit merge" in r.output, r.output
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 20, encoding="utf-8")
    r = CliRunner().invoke(cli, ["eval", "ppl", str(folders["lora"]), str(text)])
    assert r.exit_code != 0 and "lmkit merge" in r.output, r.output


def test_chat_without_chatml_tokens_names_the_fix(folders):
    r = CliRunner().invoke(cli, ["chat", str(folders["plain"])], input="hi\n/exit\n")
    assert r.exit_code != 0
    assert f"lmkit tokenizer add-tokens {folders['plain']} --chat chatml" in r.output, r.output


def test_serve_without_chatml_tokens_names_the_fix(folders):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    r = CliRunner().invoke(cli, ["serve", str(folders["plain"]), "--port", "0"])
    assert r.exit_code != 0
    assert f"lmkit tokenizer add-tokens {folders['plain']} --chat chatml" in r.output, r.output
    assert "serving" not in r.output


def test_encode_chat_refuses_to_spell_chatml_as_text(folders):
    from lmkit.errors import TokenizerError
    from lmkit.serve.chat_model import encode_chat, resolve_template
    from lmkit.tokenizers.loading import load_tokenizer

    with pytest.raises(TokenizerError, match="add-tokens"):
        encode_chat(load_tokenizer(folders["plain"]), resolve_template("chatml"), [{"role": "user", "content": "hi"}])
