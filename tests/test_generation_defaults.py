"""generation_config.json: its eos list, pad id and sampling settings are the defaults of
`lmkit generate`, `lmkit chat` and `lmkit serve`; an explicit flag or request field overrides them."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from lmkit.errors import CheckpointError
from lmkit.hub.generation_defaults import GenerationDefaults, read_generation_defaults
from lmkit.infer.checkpoint_defaults import max_new_tokens_default, sampling_settings
from lmkit.infer.stop import model_eos_ids

LLAMA_3_1 = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
             "temperature": 0.6, "top_p": 0.9}  # meta-llama/Llama-3.1-8B-Instruct's file
QWEN_3 = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
          "temperature": 0.6, "top_k": 20, "top_p": 0.95}  # Qwen/Qwen3-8B's file


class _Model:
    def __init__(self, data: dict | None) -> None:
        self.generation_defaults = GenerationDefaults.from_dict(data) if data is not None else GenerationDefaults()


def test_real_files_become_defaults():
    llama = GenerationDefaults.from_dict(LLAMA_3_1)
    assert llama.eos_token_id == (128001, 128008, 128009) and llama.greedy is False
    assert sampling_settings(_Model(LLAMA_3_1)) == {"do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                                    "top_k": None, "repetition_penalty": 1.0}
    assert model_eos_ids(_Model(LLAMA_3_1)) == [128001, 128008, 128009]  # all three stop generation
    qwen = sampling_settings(_Model(QWEN_3))
    assert (qwen["temperature"], qwen["top_p"], qwen["top_k"]) == (0.6, 0.95, 20)
    assert GenerationDefaults.from_dict(QWEN_3).pad_token_id == 151643


def test_explicit_values_override_and_do_sample_false_is_greedy():
    m = _Model(QWEN_3)
    assert sampling_settings(m, temperature=0)["do_sample"] is False  # an explicit 0: greedy
    s = sampling_settings(m, temperature=1.2, top_k=5, repetition_penalty=1.1)
    assert (s["temperature"], s["top_k"], s["top_p"], s["repetition_penalty"]) == (1.2, 5, 0.95, 1.1)
    greedy = _Model({"do_sample": False, "temperature": 0.7, "repetition_penalty": 1.05})
    assert sampling_settings(greedy, fallback={"temperature": 0.7})["do_sample"] is False
    assert sampling_settings(greedy)["repetition_penalty"] == 1.05  # applies to greedy decoding too
    assert sampling_settings(greedy, temperature=0.5)["do_sample"] is True
    silent = _Model({"eos_token_id": 2})  # lmkit's own files: eos/pad only -> the command's default
    assert sampling_settings(silent, fallback={"temperature": 0.7, "top_p": 0.95})["temperature"] == 0.7
    assert sampling_settings(None, fallback={"temperature": 0.0})["do_sample"] is False


def test_reply_length_defaults():
    assert max_new_tokens_default(_Model({"max_new_tokens": 7}), 100, 64) == 7
    assert max_new_tokens_default(_Model({"max_length": 30}), 20, 64) == 10
    assert max_new_tokens_default(_Model(None), 20, 64) == 64


def test_bad_files(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_generation_defaults(tmp_path)
    with pytest.raises(CheckpointError, match="eos_token_id"):
        GenerationDefaults.from_dict({"eos_token_id": ["x"]})
    assert read_generation_defaults(tmp_path / "missing") == GenerationDefaults()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny lmkit checkpoint with a tokenizer whose generation_config.json we rewrite per test."""
    import torch

    from lmkit.hub import save_pretrained
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.tokenizers import BPETokenizer

    path = tmp_path_factory.mktemp("gen-defaults")
    tok = BPETokenizer.train(["hello world, the weather is fine today"] * 4, vocab_size=300,
                             special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size, d_model=32, n_layers=1,
                      n_heads=2, d_ff=64, max_seq_len=64, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", tie_embeddings=False, initializer_range=0.5)
    save_pretrained(DecoderLM(cfg), path, tokenizer=tok)
    return path


def _generate(path, *args):
    from lmkit.serve.commands import generate_cmd

    r = CliRunner().invoke(generate_cmd, [str(path), "-p", "hello", "--json", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_generate_cli_follows_the_file_and_flags_override(checkpoint):
    from lmkit.hub import load_pretrained

    (checkpoint / "generation_config.json").write_text(json.dumps({"max_new_tokens": 5, "do_sample": False}))
    greedy = _generate(checkpoint)
    assert len(greedy["tokens"]) == 5  # the file's max_new_tokens
    assert _generate(checkpoint, "--max-new-tokens", "3")["tokens"] == greedy["tokens"][:3]  # the flag wins
    stop_id = greedy["tokens"][2]  # an eos list from the file stops generate there
    first = greedy["tokens"].index(stop_id)
    (checkpoint / "generation_config.json").write_text(json.dumps({"max_new_tokens": 5, "eos_token_id": [0, stop_id]}))
    assert load_pretrained(checkpoint).generation_defaults.eos_token_id == (0, stop_id)
    stopped = _generate(checkpoint)
    assert stopped["tokens"] == greedy["tokens"][: first + 1] and stopped["finish_reason"] == "stop"
    (checkpoint / "generation_config.json").write_text(json.dumps({"max_new_tokens": 12, "do_sample": True,
                                                                   "temperature": 5.0}))
    sampled = [_generate(checkpoint, "--seed", str(s))["tokens"] for s in range(3)]
    assert any(s != greedy["tokens"][: len(s)] for s in sampled)  # the file says sample
    assert _generate(checkpoint, "--temperature", "0", "--max-new-tokens", "5")["tokens"] == greedy["tokens"]
    (checkpoint / "generation_config.json").write_text('{"eos_token_id": "bad"}')
    with warnings.catch_warnings(record=True) as caught:  # a broken file warns and does not block a load
        warnings.simplefilter("always")
        assert load_pretrained(checkpoint).generation_defaults == GenerationDefaults()
    assert any("eos_token_id" in str(w.message) for w in caught)


def test_server_request_overrides_the_file(checkpoint):
    """serve: a request without temperature uses the file (greedy here); an explicit one wins."""
    from lmkit.infer.config import GenerationConfig
    from lmkit.serve.openai_format import generation_config
    from lmkit.serve.schemas import ChatCompletionRequest

    model = _Model({"do_sample": False, "top_p": 0.8})
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    cfg = generation_config(req, 8, None, False, 0, None, None, model=model)
    assert isinstance(cfg, GenerationConfig) and cfg.do_sample is False
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.9)
    cfg = generation_config(req, 8, None, False, 0, None, None, model=model)
    assert cfg.do_sample is True and cfg.temperature == 0.9 and cfg.top_p == 0.8
    cfg = generation_config(req, 8, None, False, 0, None, None, model=_Model(QWEN_3))
    assert cfg.top_k == 20
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    assert generation_config(req, 8, None, False, 0, None, None).temperature == 1.0  # no file: OpenAI's default
