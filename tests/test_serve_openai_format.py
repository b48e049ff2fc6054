"""OpenAI request/response shaping (`serve/openai_format.py`) as plain functions, without HTTP."""

from __future__ import annotations

import base64
import json
import struct
from types import SimpleNamespace

import pytest

from lmkit.serve.api_errors import APIError
from lmkit.serve.openai_format import (SSE_DONE, chat_logprobs, chat_max_tokens, check_model, choice_seed,
                                       completion_logprobs, embedding_payload, generation_config, sse, stop_list,
                                       token_budget, token_text, usage, wants_usage)


class ByteTokenizer:
    """Token i is the single byte i (so 0xC3 alone is half of a UTF-8 character)."""

    def token_bytes(self, i):
        return bytes([i])


class CharTokenizer:
    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def request(**kw):
    fields = dict(temperature=None, top_p=None, presence_penalty=0.0, frequency_penalty=0.0)
    fields.update(kw)
    return SimpleNamespace(**fields)


def test_check_model_accepts_the_served_name_or_none():
    check_model(None, "m")
    check_model("m", "m")
    with pytest.raises(APIError) as exc:
        check_model("gpt-9", "m")
    assert exc.value.status == 404 and exc.value.code == "model_not_found" and "'m'" in exc.value.message


def test_stop_list():
    assert stop_list(None) is None
    assert stop_list("x") == ["x"]
    assert stop_list(["a", "b"]) == ["a", "b"]
    for bad in (["a", "b", "c", "d", "e"], [""], ""):
        with pytest.raises(APIError) as exc:
            stop_list(bad)
        assert exc.value.status == 400 and exc.value.param == "stop"


def test_token_budget_fits_the_context_or_says_by_how_much():
    assert token_budget(10, 5, 256, 100, "max_tokens") == 5
    assert token_budget(10, None, 256, 100, "max_tokens") == 90  # the default, cut to the room left
    assert token_budget(10, None, 16, 100, "max_tokens") == 16
    with pytest.raises(APIError) as exc:
        token_budget(90, 20, 16, 100, "messages")
    e = exc.value
    assert e.status == 400 and e.code == "context_length_exceeded" and e.param == "messages"
    assert "100 tokens" in e.message and "110 (90 in the prompt + 20 max_tokens)" in e.message
    with pytest.raises(APIError) as exc:
        token_budget(100, None, 16, 100, "messages")
    assert "fills the model's context of 100" in exc.value.message


def test_chat_max_tokens_prefers_max_completion_tokens():
    assert chat_max_tokens(SimpleNamespace(max_completion_tokens=7, max_tokens=3)) == 7
    assert chat_max_tokens(SimpleNamespace(max_completion_tokens=None, max_tokens=3)) == 3


def test_choice_seed():
    assert choice_seed(None, 3) is None
    assert [choice_seed(7, i) for i in range(3)] == [7, 8, 9]


def test_generation_config_follows_openai_sampling_defaults():
    greedy = generation_config(request(temperature=0), 5, None, False, 0, None, None)
    assert not greedy.do_sample and greedy.max_new_tokens == 5 and greedy.temperature == 1.0
    default = generation_config(request(), 5, 3, True, 2, ["x"], [0, 1])
    assert default.do_sample and default.temperature == 1.0 and default.top_p == 1.0 and default.seed == 3
    assert default.logprobs and default.top_logprobs == 2 and default.stop == ["x"]
    assert list(default.eos_token_id) == [0, 1]
    tuned = generation_config(request(temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=None),
                              5, None, False, 0, [], [])
    assert tuned.temperature == 0.7 and tuned.top_p == 0.9 and tuned.presence_penalty == 0.5
    assert tuned.frequency_penalty == 0.0 and tuned.stop is None and tuned.eos_token_id is None


def test_generation_config_errors_are_400():
    with pytest.raises(APIError) as exc:
        generation_config(request(), 0, None, False, 0, None, None)
    assert exc.value.status == 400


def test_token_text_keeps_bytes_and_replaces_broken_characters():
    assert token_text(ByteTokenizer(), 65) == ("A", [65])
    assert token_text(ByteTokenizer(), 0xC3) == ("\ufffd", [0xC3])
    assert token_text(CharTokenizer(), ord("é")) == ("é", [0xC3, 0xA9])


def test_chat_logprobs_shape():
    out = chat_logprobs(CharTokenizer(), [65, 66], [-0.1, -0.2], [{65: -0.1, 67: -3.0}, None])
    assert out == {"content": [
        {"token": "A", "logprob": -0.1, "bytes": [65], "top_logprobs": [
            {"token": "A", "logprob": -0.1, "bytes": [65]}, {"token": "C", "logprob": -3.0, "bytes": [67]}]},
        {"token": "B", "logprob": -0.2, "bytes": [66], "top_logprobs": []}]}


def test_completion_logprobs_offsets_count_from_the_echoed_prompt():
    tok = CharTokenizer()
    out = completion_logprobs(tok, [65, ord("é"), 66], [-1.0, -2.0, -3.0], [{65: -1.0}, {}, {66: -3.0}], 4)
    assert out["tokens"] == ["A", "é", "B"] and out["token_logprobs"] == [-1.0, -2.0, -3.0]
    assert out["text_offset"] == [4, 5, 6]
    assert out["top_logprobs"] == [{"A": -1.0}, {}, {"B": -3.0}]
    assert completion_logprobs(tok, [65], [-1.0], [None], 0)["top_logprobs"] is None


def test_usage_and_stream_options():
    assert usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert wants_usage(SimpleNamespace(stream_options={"include_usage": True}))
    assert not wants_usage(SimpleNamespace(stream_options=None))


def test_sse_framing_keeps_unicode():
    assert sse({"a": "你好"}) == 'data: {"a": "你好"}\n\n'.encode()
    assert json.loads(sse({"x": 1})[6:]) == {"x": 1}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_embedding_payload_float_and_base64():
    torch = pytest.importorskip("torch")
    v = torch.tensor([0.5, -1.25, 3.0])
    assert embedding_payload(v, "float") == [0.5, -1.25, 3.0]
    raw = base64.b64decode(embedding_payload(v, "base64"))
    assert list(struct.unpack("<3f", raw)) == [0.5, -1.25, 3.0]
