"""The one CLI grammar: LmkitError -> one-line error, deprecated spellings, context-length errors,
and chat models whose replies are sized to the context (rag ask, agent)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import pytest
import torch
from click.testing import CliRunner

from lmkit.cli import LmkitGroup, cli
from lmkit.cli_grammar import RenamedOptionsCommand, check_fits_context, model_then_data, positional_or_option
from lmkit.errors import ConfigError, TokenizerError


# ---- the root group turns LmkitError into a CLI error ---------------------------------------
def test_group_turns_lmkit_errors_into_one_line_cli_errors():
    @click.group(cls=LmkitGroup)
    def root() -> None:
        pass

    @root.group("area")
    def area() -> None:
        pass

    @area.command("boom")
    def boom() -> None:
        raise ConfigError("--x 3 is wrong; use 2")

    @root.command("bug")
    def bug() -> None:
        raise RuntimeError("a real bug")

    r = CliRunner().invoke(root, ["area", "boom"])
    assert r.exit_code == 1 and r.output == "Error: --x 3 is wrong; use 2\n"
    assert isinstance(CliRunner().invoke(root, ["bug"]).exception, RuntimeError)  # bugs are not hidden


def test_lmkit_command_reports_a_corrupt_tokenizer_without_a_traceback(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text("{not json", encoding="utf-8")
    r = CliRunner().invoke(cli, ["tokenizer", "info", str(bad)])
    assert r.exit_code == 1 and "corrupt tokenizer file" in r.output and "Traceback" not in r.output
    assert not isinstance(r.exception, TokenizerError)  # handled: a SystemExit, not the raw error


def test_every_command_lives_in_an_area():
    import lmkit.cli as cli_module

    assert not [name for name, obj in vars(cli_module).items() if isinstance(obj, click.Command) and obj is not cli]
    assert {"info", "convert", "tokenizer", "segment", "data", "memory", "pretrain", "quickstart",
            "generate"} <= set(cli.commands)


# ---- deprecated spellings ---------------------------------------------------------------------
def _steps_command():
    seen = {}

    @click.command(cls=RenamedOptionsCommand, renamed={"--max-steps": "--steps"})
    @click.option("--steps", type=int, default=10)
    @click.argument("rest", nargs=-1)
    def cmd(steps, rest) -> None:
        seen.update(steps=steps, rest=rest)

    return cmd, seen


@pytest.mark.parametrize("args", [["--max-steps", "3"], ["--max-steps=3"]])
def test_renamed_option_still_works_with_a_deprecation_note(args):
    cmd, seen = _steps_command()
    r = CliRunner().invoke(cmd, args)
    assert r.exit_code == 0, r.output
    assert seen["steps"] == 3
    assert "--max-steps is deprecated and will be removed; use --steps" in r.stderr
    assert r.stdout == ""  # JSON printed on stdout stays parseable


def test_renamed_option_is_hidden_and_arguments_after_double_dash_are_kept():
    cmd, seen = _steps_command()
    assert "--max-steps" not in CliRunner().invoke(cmd, ["--help"]).output
    r = CliRunner().invoke(cmd, ["--steps", "4", "--", "--max-steps"])
    assert r.exit_code == 0 and seen == {"steps": 4, "rest": ("--max-steps",)} and "deprecated" not in r.output


def test_model_then_data_accepts_the_old_order_with_a_note(tmp_path, capsys):
    model, data = tmp_path / "model", tmp_path / "data.jsonl"
    model.mkdir()
    data.write_text("{}\n")
    assert model_then_data(str(model), str(data), "sft") == (str(model), str(data))
    assert capsys.readouterr().err == ""
    assert model_then_data(str(data), str(model), "sft") == (str(model), str(data))
    assert "`lmkit sft DATA MODEL` is deprecated" in capsys.readouterr().err
    with pytest.raises(click.BadParameter, match="not a model directory"):
        model_then_data(str(data), str(data), "sft")


def test_positional_or_option(capsys):
    assert positional_or_option("a.jsonl", None, "DATA", "--data") == "a.jsonl"
    assert capsys.readouterr().err == ""
    assert positional_or_option(None, "a.jsonl", "DATA", "--data") == "a.jsonl"
    assert "--data DATA is deprecated" in capsys.readouterr().err
    with pytest.raises(click.UsageError, match="missing argument DATA"):
        positional_or_option(None, None, "DATA", "--data")
    with pytest.raises(click.UsageError, match="give DATA once"):
        positional_or_option("a", "b", "DATA", "--data")


# ---- lengths beyond the context ---------------------------------------------------------------
def test_check_fits_context():
    check_fits_context("--seq-len", None, 64)
    check_fits_context("--seq-len", 64, 64)
    with pytest.raises(ConfigError, match="--seq-len 65 is longer than the model's context of 64 tokens"):
        check_fits_context("--seq-len", 65, 64)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    """A tiny decoder with a byte-level BPE tokenizer that has the ChatML tokens."""
    from lmkit.hub import save_pretrained
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.tokenizers.bpe import BPETokenizer

    d = tmp_path_factory.mktemp("chat")
    corpus = d / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog ate the bone.\n" * 20, encoding="utf-8")
    tok = BPETokenizer.train([corpus], 300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save_hf_json(d / "tokenizer.json")
    torch.manual_seed(0)
    save_pretrained(DecoderLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                          max_seq_len=64, model_type="llama")), d)
    (d / "text.txt").write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    return d


def test_eval_ppl_max_length_beyond_the_context_is_an_error(chat_model_dir):
    base = ["eval", "ppl", str(chat_model_dir), str(chat_model_dir / "text.txt")]
    r = CliRunner().invoke(cli, [*base, "--max-length", "65"])
    assert r.exit_code == 1 and "--max-length 65 is longer than the model's context of 64 tokens" in r.output
    r = CliRunner().invoke(cli, [*base, "--max-length", "64"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["max_length"] == 64


# ---- replies sized to the context; the served model by default ----------------------------------
def test_local_replies_are_sized_to_the_room_the_context_leaves(chat_model_dir):
    from lmkit.rag.chat_client import open_chat_model

    chat = open_chat_model(local=str(chat_model_dir))
    messages = [{"role": "user", "content": "the cat"}]
    from lmkit.serve.chat_model import prepare_chat

    prompt = prepare_chat(chat.inner.model, chat.inner.tokenizer, chat.inner.template, messages).prompt_ids
    room = 64 - len(prompt)
    assert 0 < room < 64
    assert chat.reply_budget(messages, None, {}) == room  # not 512: that would overflow a 64-token model
    assert chat.reply_budget(messages, 5, {}) == 5
    assert chat.chat(messages, max_tokens=None).usage["completion_tokens"] <= room


class _Models(BaseHTTPRequestHandler):
    ids: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        ok = self.headers.get("Authorization") == "Bearer k" and self.path == "/v1/models"
        body = json.dumps({"object": "list", "data": [{"id": i} for i in self.ids]} if ok else {"error": "no"})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def models_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_endpoint_model_defaults_to_the_one_it_serves(models_server):
    from lmkit.rag.chat_client import open_chat_model, served_model
    from lmkit.serve.chat_model import ChatModelError

    _Models.ids = ["qs-model"]
    assert served_model(models_server, "k") == "qs-model"
    chat = open_chat_model(models_server, api_key="k")
    assert chat.inner.model == "qs-model" and chat.reply_budget([], None, {}) is None  # the server sizes it
    assert open_chat_model(models_server, "other", api_key="k").inner.model == "other"
    with pytest.raises(ChatModelError, match="HTTP 401"):
        served_model(models_server, "wrong")
    _Models.ids = ["a", "b"]
    with pytest.raises(ConfigError, match="serves 2 models .*'a', 'b'.*--model"):
        served_model(models_server, "k")


def test_the_old_output_spelling_still_works_on_a_real_command(chat_model_dir, tmp_path):
    r = CliRunner().invoke(cli, ["quantize", str(chat_model_dir), "--output", str(tmp_path / "q"), "--method", "int8"])
    assert r.exit_code == 0, r.output
    assert "--output is deprecated and will be removed; use --out" in r.stderr and "wrote" in r.stdout
    assert (tmp_path / "q" / "quantization.json").is_file()
